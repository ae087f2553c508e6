"""The ActiveLabel app that the running MONAI Label server serves, for /activelabel routes."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.utils.app import app_instance

_REQUIRED = ("model_store", "score_store", "submissions", "leases", "settings", "compute", "presegmentations")


def activelabel_app() -> Any:
    """The served app; HTTP 501 when the server runs an app that is not an ActiveLabel app."""
    instance = app_instance()
    if not all(hasattr(instance, name) for name in _REQUIRED):
        raise HTTPException(status_code=501, detail="the served MONAI Label app is not an ActiveLabel app")
    return instance
