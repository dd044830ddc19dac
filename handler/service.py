"""The process's settings and its one ``etl_core.service.Service``, built from the environment on first use
(not at import: importing this module costs no pyarrow, so a cold start stays small)."""

from __future__ import annotations

import logging
import os
import threading
import traceback
from typing import TYPE_CHECKING

from etl_core.config import Settings
from etl_core.errors import InternalError
from etl_core.logs import log_event

if TYPE_CHECKING:
    from etl_core.service import Service


def unexpected(exc: BaseException) -> InternalError:
    """What an error nobody expected becomes at the edge: an InternalError (``exc`` itself if it is
    one), its traceback, causes included, logged to the 'etl' logger as one JSON line."""
    error = exc if isinstance(exc, InternalError) else InternalError.of(exc)
    run_id = error.details.get("run_id")
    log_event("internal_error", level=logging.ERROR, error=error.to_dict(),
              traceback="".join(traceback.format_exception(exc)), **({"run_id": run_id} if run_id else {}))
    return error


_settings: Settings | None = None
_service: Service | None = None
_service_lock = threading.Lock()


def get_settings() -> Settings:
    """The settings, read from the environment once (ConfigError if they are bad, on every call)."""
    global _settings
    with _service_lock:
        if _settings is None:
            _settings = Settings.from_env(os.environ)
        return _settings


def get_service() -> Service:
    global _service
    settings = get_settings()
    with _service_lock:
        if _service is None:
            from etl_core.service import start  # pyarrow: on first use, not at cold start

            _service = start(settings)
        return _service


def set_service(service: Service | None) -> None:
    """Tests and embedders install their own service (settings from a dict, another schema)."""
    global _service, _settings
    with _service_lock:
        _service = service
        _settings = service.settings if service is not None else None
