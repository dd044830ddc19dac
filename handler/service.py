"""The process's one ``pipeline.Service``, built from the environment on first use (not at import)."""

from __future__ import annotations

import os
import threading
import traceback

from etl_core.config import Settings
from etl_core.errors import InternalError
from etl_core.pipeline import Service, log_event


def unexpected(exc: BaseException) -> InternalError:
    """What an error nobody expected becomes at the edge: an InternalError (``exc`` itself if it is
    one), its traceback, causes included, logged to the 'etl' logger as one JSON line."""
    error = exc if isinstance(exc, InternalError) else InternalError.of(exc)
    log_event("internal_error", error=error.to_dict(), traceback="".join(traceback.format_exception(exc)))
    return error


_service: Service | None = None
_service_lock = threading.Lock()


def get_service() -> Service:
    global _service
    with _service_lock:
        if _service is None:
            _service = Service(Settings.from_env(os.environ))
        return _service


def set_service(service: Service | None) -> None:
    """Tests and embedders install their own service (settings from a dict, another schema)."""
    global _service
    with _service_lock:
        _service = service
