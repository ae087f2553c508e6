"""``GET /activelabel/uncertainty-map``: a volume's voxel uncertainty for viewers to overlay."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse

from activelabel.ml.inference import PublishedModel
from activelabel.ml.uncertainty import UncertaintyMetric
from activelabel.ml.uncertainty_map import UncertaintyMapCache
from activelabel.server.served_app import activelabel_app

router = APIRouter(prefix="/activelabel", tags=["ActiveLabel"])

_caches: dict[int, UncertaintyMapCache] = {}


def _cache(instance: Any) -> UncertaintyMapCache:
    """The served app's map cache, shared with ``uncertain_slices`` (``<state_dir>/uncertainty-maps``)."""
    shared = getattr(instance, "uncertainty_maps", None)
    if isinstance(shared, UncertaintyMapCache):
        return shared
    cache = _caches.get(id(instance))
    if cache is None:
        settings = instance.settings
        cache = UncertaintyMapCache(
            settings.state_dir / "uncertainty-maps",
            model=PublishedModel(instance.model_store, device=settings.device),
            preset=settings.preset,
            overlap=settings.sw_overlap,
        )
        _caches[id(instance)] = cache
    return cache


@router.get(
    "/uncertainty-map",
    summary="Voxel uncertainty of a volume as a float NIfTI on the image's grid",
    response_class=FileResponse,
)
def uncertainty_map(
    image: str,
    metric: UncertaintyMetric | None = None,
    samples: int | None = Query(None, ge=1, le=64, description="MC-dropout passes (default: the mc_samples setting)"),
) -> FileResponse:
    """The current model's per-voxel uncertainty of ``image`` (default metric: the server's setting).

    The answer carries the model version and metric in ``X-Model-Version`` and
    ``X-Uncertainty-Metric``; maps are cached until a new model is published.
    """
    instance = activelabel_app()
    path = instance.datastore().get_image_uri(image)
    if not path:
        raise HTTPException(status_code=404, detail=f"unknown image id {image!r}")
    chosen = metric or UncertaintyMetric(instance.settings.uncertainty_metric)
    file, version = _cache(instance).get(image, path, metric=chosen, samples=samples or instance.settings.mc_samples)
    return FileResponse(
        file,
        media_type="application/gzip",
        filename=f"{image}_{chosen.value}.nii.gz",
        headers={"X-Model-Version": str(version), "X-Uncertainty-Metric": chosen.value},
    )
