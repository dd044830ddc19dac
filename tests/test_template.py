"""template.yaml, read as AWS would deploy it: SAM's own translator turns it into CloudFormation, the
conditions are decided for each AuthMode and AllowGetTrigger, and then every HTTP route must have an
authorizer, each of the three IAM policies must grant exactly its audience's routes (judged with IAM's
own wildcards), each JWT route must ask for exactly its audience's scope, and the function's
environment must carry the secret and retention settings that etl_core/config.py reads."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from cfnlint.decode import decode
from samtranslator.translator.transform import transform

from handler.app import app
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

NO_VALUE = object()
PSEUDO = {"AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws",
          "AWS::StackName": "etl", "AWS::URLSuffix": "amazonaws.com"}
API_ID = "a1b2c3d4e5"
RESOURCE_IDS = {"EtlApi": API_ID, "EtlFunction.Arn": "arn:aws:lambda:eu-west-1:123456789012:function:etl"}

# Who may call what: the three audiences.
AUDIENCE = {("POST", "/trigger-etl"): "run", ("GET", "/trigger-etl"): "run",
            ("GET", "/runs"): "read", ("GET", "/runs/{run_id}"): "read", ("GET", "/health"): "read",
            ("GET", "/openapi.json"): "read", ("GET", "/runs/{run_id}/rejects"): "rejects",
            ("GET", "/runs/{run_id}/changes"): "rejects", ("GET", "/runs/{run_id}/features"): "rejects",
            ("POST", "/runs/{run_id}/restore"): "run"}
POLICY_OF = {"read": "ReadRunsPolicy", "run": "StartRunsPolicy", "rejects": "ReadRejectsPolicy"}


def _template() -> dict[str, Any]:
    found, problems = decode(str(ROOT / "template.yaml"))
    assert not problems and found is not None, problems
    plain: dict[str, Any] = json.loads(json.dumps(found, default=str))
    return plain


TEMPLATE = _template()


class _Policies:
    def load(self) -> dict[str, str]:
        return {"AWSLambdaVPCAccessExecutionRole":
                "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"}


def translated(params: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What CloudFormation receives after SAM's transform (the image URI is what sam deploy fills in)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", PSEUDO["AWS::Region"])
    source = json.loads(json.dumps(TEMPLATE))
    for resource in source["Resources"].values():  # EtlFunction, and ShardFunction of the same image
        if resource["Type"] == "AWS::Serverless::Function" and resource["Properties"].get("PackageType") == "Image":
            resource["Properties"]["ImageUri"] = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/etl:1"
    out: dict[str, Any] = transform(source, params, _Policies())
    return out


class Stack:
    """A translated template with its parameters' values: decides conditions, resolves intrinsics."""

    def __init__(self, template: dict[str, Any], overrides: dict[str, str]) -> None:
        self.template = template
        self.params = {name: str(spec.get("Default", "")) for name, spec in template["Parameters"].items()}
        self.params.update(overrides)

    def condition(self, name: str) -> bool:
        return bool(self._value(self.template["Conditions"][name]))

    def _value(self, node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            (key, arg), = node.items()
            if key == "Fn::Equals":
                return self._value(arg[0]) == self._value(arg[1])
            if key == "Fn::Not":
                return not self._value(arg[0])
            if key == "Fn::And":
                return all(self._value(a) for a in arg)
            if key == "Fn::Or":
                return any(self._value(a) for a in arg)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Join":
                return arg[0].join(self._value(a) for a in self._value(arg[1]))
            if key == "Ref":
                return self.params[arg].split(",") if self.template["Parameters"][arg]["Type"].startswith(
                    "CommaDelimited") else self.params[arg]
        return node

    def resolve(self, node: Any) -> Any:
        """Fn::If, Ref and Fn::Sub, as CloudFormation would (resources' ids are stand-ins)."""
        if isinstance(node, list):
            return [r for r in (self.resolve(item) for item in node) if r is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Fn::If":
                return self.resolve(arg[1] if self.condition(arg[0]) else arg[2])
            if key == "Ref":
                if arg == "AWS::NoValue":
                    return NO_VALUE
                return self.params.get(arg, PSEUDO.get(arg, RESOURCE_IDS.get(arg, f"<{arg}>")))
            if key == "Fn::Sub":
                text, names = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))
                lookup = {**PSEUDO, **RESOURCE_IDS, **self.params, **names}
                return re.sub(r"\$\{([^}!]+)\}", lambda m: str(lookup.get(m.group(1), f"<{m.group(1)}>")), text)
        return {k: r for k, r in ((k, self.resolve(v)) for k, v in node.items()) if r is not NO_VALUE}

    def resources(self, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for name, resource in self.template["Resources"].items():
            if resource["Type"] == kind and ("Condition" not in resource or self.condition(resource["Condition"])):
                yield name, self.resolve(resource.get("Properties", {}))


COMBINATIONS = [{"AuthMode": mode, "AllowGetTrigger": get} for mode in ("IAM", "JWT") for get in ("false", "true")]


@pytest.fixture(params=COMBINATIONS, ids=lambda c: f"{c['AuthMode']}-get-{c['AllowGetTrigger']}")
def stack(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Stack:
    params = {"DataBucketName": "lab-exports", **request.param}
    if params["AuthMode"] == "JWT":
        params |= {"JwtIssuer": "https://issuer.example", "JwtAudience": "etl-client"}
    return Stack(translated(params, monkeypatch), params)


def body(stack: Stack) -> dict[str, Any]:
    apis = list(stack.resources("AWS::ApiGatewayV2::Api"))
    assert [name for name, _ in apis] == ["EtlApi"], "one HTTP API, the explicit one (no implicit ServerlessHttpApi)"
    found: dict[str, Any] = apis[0][1]["Body"]
    return found


def routes(stack: Stack) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): operation for path, item in body(stack)["paths"].items()
            for method, operation in item.items() if "x-amazon-apigateway-integration" in operation}


def test_every_route_has_an_authorizer_and_only_its_audiences_scope(stack: Stack) -> None:
    jwt = stack.params["AuthMode"] == "JWT"
    found = routes(stack)
    assert found, "no routes"
    for route, operation in found.items():
        security = operation.get("security")
        assert security, f"{route} has no authorizer"
        if jwt:
            assert security == [{"JwtAuthorizer": [f"experiment-etl/{AUDIENCE[route]}"]}], route
        else:
            assert security == [{"AWS_IAM": []}], route
    schemes = body(stack)["components"]["securitySchemes"]
    if jwt:
        config = schemes["JwtAuthorizer"]["x-amazon-apigateway-authorizer"]
        assert config["type"] == "jwt" and config["identitySource"] == "$request.header.Authorization"
        assert config["jwtConfiguration"] == {"issuer": "https://issuer.example", "audience": ["etl-client"]}
    else:
        assert "JwtAuthorizer" not in schemes
        assert schemes["AWS_IAM"]["x-amazon-apigateway-authtype"] == "awsSigv4"


def test_the_template_routes_the_apps_routes_and_get_trigger_only_when_asked(stack: Stack) -> None:
    served = {(method, route.path) for route in app.routes if hasattr(route, "methods")
              for method in route.methods if route.path not in ("/docs", "/docs/oauth2-redirect", "/redoc")
              and method != "HEAD"}  # Starlette's HEAD beside /openapi.json's GET; the API routes no HEAD
    assert set(AUDIENCE) == served, "every route of the app has an audience"
    expected = set(served) if stack.params["AllowGetTrigger"] == "true" else served - {("GET", "/trigger-etl")}
    assert set(routes(stack)) == expected


def test_every_invoke_permission_is_for_one_of_the_apis_routes(stack: Stack) -> None:
    allowed = {f"{method}/{path.strip('/')}" for method, path in routes(stack)}
    arns = [p["SourceArn"] for _, p in stack.resources("AWS::Lambda::Permission")
            if p["Principal"] == "apigateway.amazonaws.com"]
    prefix = f"arn:aws:execute-api:eu-west-1:123456789012:{API_ID}/*/"
    granted = {re.sub(r"/\*(?=/|$)", "/{run_id}", arn.removeprefix(prefix)) for arn in arns}
    assert all(arn.startswith(prefix) for arn in arns), arns
    assert granted == allowed


def iam_match(pattern: str, value: str) -> bool:
    """IAM's resource wildcards: * any run of characters (also /), ? exactly one."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value) is not None


def arn(method: str, path: str) -> str:
    return f"arn:aws:execute-api:eu-west-1:123456789012:{API_ID}/$default/{method}{path}"


def who_may(policies: dict[str, list[str]], method: str, path: str) -> set[str]:
    return {name for name, patterns in policies.items() if any(iam_match(p, arn(method, path)) for p in patterns)}


def iam_policies(stack: Stack) -> dict[str, list[str]]:
    found = {}
    for name, props in stack.resources("AWS::IAM::ManagedPolicy"):
        statements = props["PolicyDocument"]["Statement"]
        assert all(s["Effect"] == "Allow" and s["Action"] == "execute-api:Invoke" for s in statements), name
        found[name] = [r for s in statements for r in s["Resource"]]
    return found


RUN_IDS = ["1", "7", "42", "12345678", "99999999"]


def test_each_iam_policy_grants_exactly_its_audiences_routes(stack: Stack) -> None:
    policies = iam_policies(stack)
    if stack.params["AuthMode"] == "JWT":
        assert policies == {}
        return
    assert set(policies) == set(POLICY_OF.values())
    for (method, path), audience in AUDIENCE.items():
        if (method, path) not in routes(stack):
            assert who_may(policies, method, path) == set(), f"{method} {path} is not routed, yet granted"
            continue
        for run_id in RUN_IDS if "{run_id}" in path else [""]:
            concrete = path.replace("{run_id}", run_id)
            assert who_may(policies, method, concrete) == {POLICY_OF[audience]}, (method, concrete)


@pytest.mark.parametrize("digits", range(1, 20))
def test_reading_runs_never_grants_a_runs_rejects(digits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A * (or enough ?) in the read policy would also match /runs/1/rejects: personal data."""
    stack = Stack(translated({"DataBucketName": "lab-exports"}, monkeypatch), {})
    policies = iam_policies(stack)
    run_id = "9" * digits
    for personal in ("rejects", "changes", "features"):  # users' names: the personal-data audience only
        assert who_may(policies, "GET", f"/runs/{run_id}/{personal}") == {"ReadRejectsPolicy"}
        assert who_may(policies, "GET", f"/runs/{run_id}/{personal}/") == set()
    for method in ("POST", "PUT", "DELETE", "HEAD", "OPTIONS"):
        assert who_may(policies, method, f"/runs/{run_id}") == set()
        assert who_may(policies, method, "/runs") == set()
    assert who_may(policies, "GET", "/trigger-etl") == set()  # not routed by default, not granted either
    assert who_may(policies, "POST", "/trigger-etl") == {"StartRunsPolicy"}
    granted = who_may(policies, "GET", f"/runs/{run_id}")
    assert granted == ({"ReadRunsPolicy"} if digits <= 8 else set())  # the limit docs/security.md states


def test_no_route_is_left_to_an_implicit_api(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, event in TEMPLATE["Resources"]["EtlFunction"]["Properties"]["Events"].items():
        if event["Type"] == "HttpApi":
            assert event["Properties"].get("ApiId") == {"Ref": "EtlApi"}, name
    out = translated({"DataBucketName": "lab-exports"}, monkeypatch)
    assert "ServerlessHttpApi" not in out["Resources"]
    assert TEMPLATE["Resources"]["EtlApi"]["Properties"]["Auth"] == {"EnableIamAuthorizer": True,
                                                                     "DefaultAuthorizer": "AWS_IAM"}


def function_env_and_statements(stack: Stack, name: str = "EtlFunction") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    (function,) = [props for found, props in stack.resources("AWS::Lambda::Function") if found == name]
    roles = [props for found, props in stack.resources("AWS::IAM::Role") if found == f"{name}Role"]
    statements = [s for role in roles for policy in role.get("Policies", [])
                  for s in policy["PolicyDocument"]["Statement"]]
    return function["Environment"]["Variables"], statements


NAMED = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:etl/db-AbCdEf"
KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize("given", [{}, {"DbSecretArn": NAMED}, {"DbSecretArn": NAMED, "DbSecretKmsKeyArn": KEY}],
                         ids=["no-secret", "secret", "secret-and-key"])
def test_the_function_may_read_only_the_named_secret_and_decrypt_only_with_its_key(
        given: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"DataBucketName": "lab-exports", **given}
    stack = Stack(translated(params, monkeypatch), params)
    for function in ("ShardFunction", "EtlFunction"):  # the sharded path's counting function writes too
        _the_function_may_read_only_the_named_secret(stack, function, given)


def _the_function_may_read_only_the_named_secret(stack: Stack, function: str, given: dict[str, str]) -> None:
    env, statements = function_env_and_statements(stack, function)
    assert env["DB_SECRET_ID"] == given.get("DbSecretArn", "")
    secrets = [s for s in statements if "secretsmanager" in json.dumps(s["Action"])]
    assert secrets == ([{"Sid": "ReadTheDatabasePasswordOnly", "Effect": "Allow",
                         "Action": "secretsmanager:GetSecretValue", "Resource": NAMED}] if given else [])
    decrypts = [s for s in statements if s.get("Sid") == "DecryptThatSecretOnly"]
    if "DbSecretKmsKeyArn" in given:
        assert decrypts == [{"Sid": "DecryptThatSecretOnly", "Effect": "Allow", "Action": "kms:Decrypt",
                             "Resource": KEY, "Condition": {"StringEquals": {
                                 "kms:ViaService": "secretsmanager.eu-west-1.amazonaws.com"}}}]
    else:
        assert decrypts == []
    assert all("*" not in json.dumps(s.get("Resource", "")) for s in secrets + decrypts)


def test_retention_settings_reach_the_function_with_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"DataBucketName": "lab-exports"}
    env, _ = function_env_and_statements(Stack(translated(params, monkeypatch), params))
    assert (env["ETL_REJECTS_RETENTION_DAYS"], env["ETL_RUNS_RETENTION_DAYS"], env["ETL_REJECTS_KEEP_RAW"],
            env["ETL_HISTORY_RETENTION_DAYS"]) == ("30", "365", "true", "365")
    params |= {"RejectsRetentionDays": "7", "RunsRetentionDays": "90", "RejectsKeepRaw": "false",
               "HistoryRetentionDays": "60"}
    env, _ = function_env_and_statements(Stack(translated(params, monkeypatch), params))
    assert (env["ETL_REJECTS_RETENTION_DAYS"], env["ETL_RUNS_RETENTION_DAYS"], env["ETL_REJECTS_KEEP_RAW"],
            env["ETL_HISTORY_RETENTION_DAYS"]) == ("7", "90", "false", "60")


def test_the_database_url_needs_no_password() -> None:
    spec = TEMPLATE["Parameters"]["DatabaseUrl"]
    assert spec["NoEcho"] is True and spec.get("Default") == ""
    assert "without a password" in spec["Description"]
    assert not re.search(r"postgresql://[^@\s/]*:[^@\s/]*@", spec["Description"])  # its example has none


def test_the_bucket_refuses_requests_without_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"DataBucketName": "lab-exports"}
    stack = Stack(translated(params, monkeypatch), params)
    (_, policy), = stack.resources("AWS::S3::BucketPolicy")
    assert policy["Bucket"] == "<DataBucket>"
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert (statement["Effect"], statement["Principal"], statement["Action"]) == ("Deny", "*", "s3:*")
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert statement["Resource"] == [{"Fn::GetAtt": ["DataBucket", "Arn"]}, "<DataBucket.Arn>/*"]
    (_, bucket), = stack.resources("AWS::S3::Bucket")
    assert all(bucket["PublicAccessBlockConfiguration"].values())


def test_the_sharded_run_plans_and_reduces_on_the_job_and_counts_shards_on_the_shard_function(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/scale.md: Plan and Reduce are runs of EtlFunction (one at a time), the Distributed Map sends each
    shard to ShardFunction (this same image, ShardConcurrency at once), which no event or route reaches."""
    source = TEMPLATE["Resources"]
    states = source["ShardedRun"]["Properties"]["Definition"]["States"]
    functions = source["ShardedRun"]["Properties"]["DefinitionSubstitutions"]
    assert states["Plan"]["Parameters"]["Payload"]["action"] == "plan-shards"
    assert states["Reduce"]["Parameters"]["Payload"]["action"] == "reduce-shards"
    assert states["Plan"]["Parameters"]["FunctionName"] == states["Reduce"]["Parameters"]["FunctionName"] == \
        "${EtlFunctionArn}" and functions["EtlFunctionArn"] == {"Fn::GetAtt": ["EtlFunction", "Arn"]}
    count = states["Count"]
    assert count["Type"] == "Map" and count["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert count["ToleratedFailurePercentage"] == 0  # a shard that fails for good fails the execution
    [task] = count["ItemProcessor"]["States"].values()
    assert task["Parameters"]["FunctionName"] == "${ShardFunctionArn}"
    assert functions["ShardFunctionArn"] == {"Fn::GetAtt": ["ShardFunction", "Arn"]}
    shard = source["ShardFunction"]
    assert "Events" not in shard["Properties"] and shard["Metadata"] == source["EtlFunction"]["Metadata"]
    assert shard["Properties"]["ReservedConcurrentExecutions"] == {"Ref": "ShardConcurrency"}

    out = translated({"DataBucketName": "lab-exports"}, monkeypatch)
    roles = {name: r["Properties"] for name, r in out["Resources"].items() if r["Type"] == "AWS::IAM::Role"}
    statements = [s for p in roles["ShardedRunRole"]["Policies"] for s in p["PolicyDocument"]["Statement"]]
    def actions(statement: dict[str, Any]) -> list[str]:
        return statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]

    invoked = [json.dumps(s["Resource"]) for s in statements if "lambda:InvokeFunction" in actions(s)]
    assert sorted(r.count('"Ref": "EtlFunction"') + 2 * r.count('"Ref": "ShardFunction"') for r in invoked) == [1, 2]
    assert {a for s in statements for a in actions(s)} == {
        "lambda:InvokeFunction", "states:StartExecution", "states:DescribeExecution", "states:StopExecution"}
    [start] = [s for s in statements if "states:StartExecution" in actions(s)]
    assert start["Resource"]["Fn::Sub"].endswith(":stateMachine:${AWS::StackName}-sharded-run")
    assert source["ShardedRun"]["Properties"]["Name"] == {"Fn::Sub": "${AWS::StackName}-sharded-run"}
