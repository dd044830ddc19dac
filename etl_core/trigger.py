"""What one trigger asks of the job: the policy, a data location, whether to force the load.  The
edge checks a caller's values (handler/models.py ``TriggerQuery``, for HTTP and direct invocations
alike); an S3 notification's trigger is made here, from the object's key."""

from __future__ import annotations

import dataclasses

from etl_core.config import Settings
from etl_core.errors import BadRequest, shorten
from etl_core.inputs import SHOWN_CHARS


@dataclasses.dataclass(frozen=True)
class Trigger:
    """What one trigger asks for: the policy (None: the settings'), optionally a data directory under
    DATA_ROOT, whether to override the load guard and the unchanged check, and whether to do everything
    but the write (a dry run: it answers what a load would change)."""

    policy: str | None = None
    data: str | None = None
    force: bool = False
    dry_run: bool = False

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
