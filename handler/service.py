"""The process's one ``pipeline.Service``, built from the environment on first use (not at import)."""

from __future__ import annotations

import os
import threading

from etl_core.config import Settings
from etl_core.pipeline import Service

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
