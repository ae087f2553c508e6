"""The ASGI app of ``activelabel serve``: MONAI Label's FastAPI app plus /activelabel routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.middleware import Middleware
from monailabel.app import app
from monailabel.config import settings as monailabel_settings

from activelabel.request_guard import install_guard
from activelabel.request_user import caller_name
from activelabel.routes_labels import router as labels_router
from activelabel.routes_uncertainty import router as uncertainty_router
from activelabel.served_app import activelabel_app as _activelabel_app
from activelabel.simulation.stop_rule import StopRule
from activelabel.status import project_status
from activelabel.task_guard import OneTaskAtATime, task_pending
from activelabel.task_worker import install_task_worker

router = APIRouter(prefix="/activelabel", tags=["ActiveLabel"])


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
        training_running=task_pending("train"),
        audits=instance.audits,
        label_versions=instance.label_versions,
        readers=instance.settings.readers,
    )


@router.post("/skip", summary="Give a served volume back to the pool (ends the caller's lease)")
def skip(image: str, client_id: str = "anonymous") -> dict[str, Any]:
    instance = _activelabel_app()
    if image not in set(instance.datastore().list_images()):
        raise HTTPException(status_code=404, detail=f"unknown image id {image!r}")
    client_id = caller_name(client_id)
    released = instance.leases.release(image, client_id=client_id)
    if not released:
        raise HTTPException(status_code=409, detail=f"{image!r} is not leased to {client_id!r}")
    return {"image": image, "released": True}


app.include_router(router)
app.include_router(uncertainty_router)
app.include_router(labels_router)
install_guard(app, conf=monailabel_settings.MONAI_LABEL_APP_CONF or {})
# Inside the access guard: an unauthenticated start request gets 401, not 429.
app.user_middleware.append(Middleware(OneTaskAtATime))
# Train/scoring/batch-infer tasks fork from a pre-imported worker instead of a fresh interpreter.
install_task_worker(
    conf=monailabel_settings.MONAI_LABEL_APP_CONF or {}, app_dir=monailabel_settings.MONAI_LABEL_APP_DIR
)

__all__ = ["app", "router"]
