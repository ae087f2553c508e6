"""The ASGI app of ``activelabel serve``: MONAI Label's FastAPI app plus /activelabel routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from monailabel.app import app
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.async_tasks.utils import processes

from activelabel.simulation.stop_rule import StopRule
from activelabel.status import project_status

router = APIRouter(prefix="/activelabel", tags=["ActiveLabel"])


def _activelabel_app() -> Any:
    instance = app_instance()
    if not all(hasattr(instance, n) for n in ("model_store", "score_store", "submissions", "leases", "settings")):
        raise HTTPException(status_code=501, detail="the served MONAI Label app is not an ActiveLabel app")
    return instance


@router.get("/status", summary="Labeling progress, current model and score freshness")
def status() -> dict[str, Any]:
    instance = _activelabel_app()
    return project_status(
        datastore=instance.datastore(),
        model_store=instance.model_store,
        score_store=instance.score_store,
        submissions=instance.submissions,
        stop_rule=StopRule(min_agreement=instance.settings.stop_min_agreement, max_gap=instance.settings.stop_max_gap),
        stop_window=instance.settings.stop_window,
        training_running=bool(processes("train")),
    )


@router.post("/skip", summary="Give a served volume back to the pool (ends the caller's lease)")
def skip(image: str, client_id: str = "anonymous") -> dict[str, Any]:
    instance = _activelabel_app()
    if image not in set(instance.datastore().list_images()):
        raise HTTPException(status_code=404, detail=f"unknown image id {image!r}")
    released = instance.leases.release(image, client_id=client_id)
    if not released:
        raise HTTPException(status_code=409, detail=f"{image!r} is not leased to {client_id!r}")
    return {"image": image, "released": True}


app.include_router(router)

__all__ = ["app", "router"]
