"""What one trigger asks of the job, parsed from a query string's, an event's or an S3 notification's
values: BadRequest names the field and what it accepts."""

from __future__ import annotations

import dataclasses
import json

from etl_core.config import POLICIES, Settings
from etl_core.errors import BadRequest, shorten
from etl_core.inputs import SHOWN_CHARS

FORCE_VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclasses.dataclass(frozen=True)
class Trigger:
    """What one trigger asks for: the policy, optionally a data directory under DATA_ROOT, and whether
    to override the load guard."""

    policy: str | None = None
    data: str | None = None
    force: bool = False

    @classmethod
    def parse(cls, *, policy: object = None, data: object = None, force: object = None,
              **unknown: object) -> Trigger:
        """A trigger from a query string's or an event's values (strings, or JSON values); BadRequest
        names the field and what it accepts.  An empty or null value is the same as none."""
        if unknown:
            raise BadRequest(f"unknown parameter(s) {', '.join(sorted(map(_shown, unknown)))}; "
                             "the accepted ones are policy, data and force")
        return cls(policy=_policy(policy), data=_data(data), force=_force(force))

    @classmethod
    def of_object(cls, settings: Settings, bucket: str, key: str) -> Trigger:
        """The trigger of an S3 notification for ``key`` (decoded) in ``bucket``: the set whose manifest
        it is, as a ``data`` prefix below DATA_URL.  BadRequest for another bucket, or a key outside it."""
        url = settings.data_url
        shown = shorten(f"s3://{bucket}/{key}", SHOWN_CHARS)
        if url is None:
            raise BadRequest("an S3 notification, but DATA_URL is not an s3:// URL", object=shown)
        root_bucket, _, root = url.removeprefix("s3://").partition("/")
        directory = key.rpartition("/")[0]
        if bucket != root_bucket or not (directory + "/").startswith(root):
            raise BadRequest("the object is not below DATA_URL", object=shown)
        return cls(data=directory[len(root):] or None)


def _policy(value: object) -> str | None:
    if value is None or value == "":
        return None
    if value not in POLICIES:
        raise BadRequest(f"policy must be one of {', '.join(POLICIES)} (or absent), not {_shown(value)}")
    return str(value)


def _data(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"data must be a string, a directory below the data root (or absent), not {_shown(value)}")
    return value


def _force(value: object) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in FORCE_VALUES:
        return FORCE_VALUES[value.lower()]
    raise BadRequest(f"force must be true or false (also 1/0, yes/no; or absent), not {_shown(value)}")


def _shown(value: object) -> str:
    """A caller's value as an error repeats it: a string quoted, JSON's other values as JSON, cut short."""
    if isinstance(value, str):
        return repr(shorten(value, SHOWN_CHARS))
    kind = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return f"{shorten(json.dumps(value, default=str), SHOWN_CHARS)} ({kind.get(type(value), type(value).__name__)})"
