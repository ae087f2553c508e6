"""``/activelabel/status`` and ``/activelabel/skip``: the project's numbers, and giving a volume back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from activelabel.access.request_user import caller_name
from activelabel.server.served_app import activelabel_app
from activelabel.server.status import project_status, serving_status
from activelabel.server.stop_rule import StopRule
from activelabel.server.task_guard import task_pending

router = APIRouter(prefix="/activelabel", tags=["ActiveLabel"])


@router.get("/status", summary="Labeling progress, current model and score freshness")
def status() -> dict[str, Any]:
    instance = activelabel_app()
    answer = project_status(
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
    answer["serving"] = serving_status(
        compute=instance.compute,
        presegmentations=instance.presegmentations,
        model_version=answer["model"]["version"],
    )
    return answer


@router.post("/skip", summary="Give a served volume back to the pool (ends the caller's lease)")
def skip(image: str, client_id: str = "anonymous") -> dict[str, Any]:
    instance = activelabel_app()
    if image not in set(instance.datastore().list_images()):
        raise HTTPException(status_code=404, detail=f"unknown image id {image!r}")
    client_id = caller_name(client_id)
    released = instance.leases.release(image, client_id=client_id)
    if not released:
        raise HTTPException(status_code=409, detail=f"{image!r} is not leased to {client_id!r}")
    return {"image": image, "released": True}
