"""The OpenAPI document tells the truth: real response models, our error documents per status as
each error class declares its status, no FastAPI default 422.  That the template routes every
documented path, each behind an authorizer, is tests/test_template.py's."""

from __future__ import annotations

import json
from typing import Any

import pytest

from etl_core.errors import EtlError
from etl_core.status import RunStatus
from handler import models
from handler.app import ROUTE_ERRORS, app, status_for
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

DOCUMENT = app.openapi()
OPERATIONS = {"/trigger-etl": ["get", "post"], "/runs": ["get"], "/runs/{run_id}": ["get"],
              "/runs/{run_id}/rejects": ["get"], "/runs/{run_id}/changes": ["get"],
              "/runs/{run_id}/features": ["get"], "/runs/{run_id}/restore": ["post"], "/health": ["get"]}
SUCCESS = {"/trigger-etl": "RunSummary", "/runs": "RunsPage", "/runs/{run_id}": "RunRecord",
           "/runs/{run_id}/rejects": "RejectsPage", "/runs/{run_id}/changes": "ChangesPage",
           "/runs/{run_id}/features": "FeaturesPage", "/runs/{run_id}/restore": "RunSummary", "/health": "Health"}


def resolve(ref: str) -> dict[str, Any]:
    found: dict[str, Any] = DOCUMENT["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return found


def test_no_default_validation_error_is_documented() -> None:
    text = json.dumps(DOCUMENT)
    assert "HTTPValidationError" not in text and '"ValidationError"' not in text


def test_every_route_answers_with_its_model() -> None:
    assert {path: sorted(item) for path, item in DOCUMENT["paths"].items()} == OPERATIONS
    for path, model in SUCCESS.items():
        for method in OPERATIONS[path]:
            ok = DOCUMENT["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
            assert ok == {"$ref": f"#/components/schemas/{model}"}, (path, method)
            assert resolve(ok["$ref"])["properties"], path


def test_every_routes_error_statuses_are_those_of_the_status_table() -> None:
    for path, classes in ROUTE_ERRORS.items():
        for method in OPERATIONS[path]:
            responses = DOCUMENT["paths"][path][method]["responses"]
            documented = {int(status) for status in responses if status != "200"}
            assert documented == {status_for(cls) for cls in classes}, path
            for status in documented:
                codes = {cls.code for cls in classes if status_for(cls) == status}
                schema = resolve(responses[str(status)]["content"]["application/json"]["schema"]["$ref"])
                detail = resolve(schema["properties"]["error"]["$ref"])
                assert set(detail["required"]) >= {"type", "code", "message"}
                code = detail["properties"]["code"]
                allowed = set(code["enum"]) if "enum" in code else {code["const"]}
                assert codes <= allowed, (path, status)
                assert all(STATUS_OF_CODE[code] == status for code in allowed), (path, status)
                assert responses[str(status)]["description"] == "code: " + ", ".join(
                    dict.fromkeys(cls.code for cls in classes if status_for(cls) == status))


def _subclasses(cls: type[EtlError]) -> list[type[EtlError]]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))]


STATUS_OF_CODE = {cls.code: status_for(cls) for cls in _subclasses(EtlError)}


# every code's status and whether it is the caller's fault (a warning, not an error), as docs/api.md lists them
ANSWERS = {
    "bad_request": (400, True), "unsupported_event": (400, True), "run_not_found": (404, True),
    "not_found": (404, True), "method_not_allowed": (405, True), "history_purged": (410, True),
    "run_in_progress": (409, True),
    "foreign_key_conflict": (409, True), "source_changed": (409, True), "contract_violation": (422, True),
    "load_refused": (422, True), "bad_manifest": (422, True), "source_missing": (422, True),
    "database_unavailable": (503, False), "source_unavailable": (503, False), "source_forbidden": (503, False),
    "features_stale": (503, False), "bad_config": (500, False), "load_failed": (500, False),
    "source_unreadable": (500, False), "internal_error": (500, False), "etl_error": (500, False),
    "schema_too_new": (500, False), "input_too_large": (507, False),
    "shards_incomplete": (409, True),
}


def test_each_error_class_declares_its_status_and_whose_fault_it_is() -> None:
    assert {cls.code: (status_for(cls), cls.caller) for cls in _subclasses(EtlError)} == ANSWERS
    assert STATUS_OF_CODE["features_stale"] == 503 and STATUS_OF_CODE["database_unavailable"] == 503


def test_the_paging_parameters_are_documented_with_their_bounds() -> None:
    parameters = {p["name"]: p["schema"] for p in DOCUMENT["paths"]["/runs"]["get"]["parameters"]}
    assert (parameters["limit"]["minimum"], parameters["limit"]["maximum"]) == (1, models.MAX_PAGE)
    assert resolve(parameters["status"]["anyOf"][0]["$ref"])["enum"] == list(RunStatus)
    assert parameters["before"]["anyOf"][0]["minimum"] == 1
    rejects = {p["name"]: p["schema"] for p in DOCUMENT["paths"]["/runs/{run_id}/rejects"]["get"]["parameters"]}
    assert rejects["after"]["minimum"] == 0 and rejects["run_id"]["type"] == "integer"


def test_run_statuses_are_one_list() -> None:
    from etl_core.store import sql

    assert models.RunStatus is RunStatus
    assert sql.STATUS_CHECK == ("CHECK (status IN ('running', 'succeeded', 'partial', 'failed', 'unchanged', "
                                "'restored', 'dry_run'))")


def test_the_readme_links_to_the_schema() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "GET /openapi.json" in readme


def test_the_trigger_parameters_are_documented_with_their_types() -> None:
    from etl_core.config import POLICIES

    for method in ("post", "get"):
        parameters = {p["name"]: p["schema"] for p in DOCUMENT["paths"]["/trigger-etl"][method]["parameters"]}
        assert set(parameters) == {"policy", "data", "force", "dry_run"}
        assert tuple(parameters["policy"]["anyOf"][0]["enum"]) == POLICIES
        assert parameters["force"]["type"] == "boolean" and "unchanged" in parameters["force"]["description"]
        assert parameters["dry_run"]["type"] == "boolean" and "write" in parameters["dry_run"]["description"]
    restore = {p["name"] for p in DOCUMENT["paths"]["/runs/{run_id}/restore"]["post"]["parameters"]}
    assert restore == {"run_id", "force", "dry_run"}


def test_every_direct_action_has_its_model_and_a_valid_example() -> None:
    from handler import lambda_function

    table = lambda_function._actions()
    assert set(table) == set(lambda_function.ACTIONS)
    for action, (model, _) in table.items():
        model.model_validate(lambda_function.ACTIONS[action])  # the example an error shows is one it accepts
