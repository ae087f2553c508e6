"""The ``refine`` infer task: a mask corrected around the clinician's clicks.

Request (MONAI Label's DeepEdit click convention): for each label name a list of positive
clicks ``[[i, j, k], ...]`` and ``background`` for negative clicks, as voxel indices of the
image file's array; the current mask as the ``label`` upload (a label map on the image's
grid, values as in ``labels.json``).  Without ``label`` the task refines the segmentation
task's answer for the image (its stored pre-segmentation when there is one).  The answer is
a label map on the image's grid, like the segmentation task's.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import DeleteItemsd, MapTransform
from monailabel.interfaces.tasks.infer_v2 import InferType

from activelabel.config import Settings
from activelabel.fsutil import atomic_write
from activelabel.labelmap import LabelMap
from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.inference import PublishedModel
from activelabel.ml.interaction import (
    BACKGROUND,
    LOCAL_RADIUS,
    Click,
    Clicks,
    merge_near_clicks,
    points_to_model_grid,
    refine_inputs,
    refine_spec,
)
from activelabel.ml.networks import build_network
from activelabel.ml.transforms import load_transforms
from activelabel.store.validation import InputRejected
from activelabel.tasks.infer import PublishedModelInfer
from activelabel.workers.compute import ComputePool


def parse_clicks(request: Mapping[str, Any], labels: LabelMap) -> dict[str, list[list[float]]]:
    """The request's clicks by label name (and ``background``), checked.

    Keys that are neither a label name nor ``background`` are other request parameters and
    are ignored.

    Raises:
        InputRejected: a click list that is not a list of ``[i, j, k]`` numbers, or no click at all.
    """
    clicks: dict[str, list[list[float]]] = {}
    for name in (*labels.names, BACKGROUND):
        points = request.get(name)
        if points is None:
            continue
        if not isinstance(points, list) or not all(
            isinstance(p, list)
            and len(p) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
            for p in points
        ):
            raise InputRejected(f"clicks of {name!r} must be a list of [i, j, k] voxel indices, got {points!r:.100}")
        clicks[name] = [[float(v) for v in p] for p in points]
    if not any(clicks.values()):
        names = ", ".join(repr(n) for n in (*labels.names, BACKGROUND))
        raise InputRejected(f"refine needs at least one click: give [[i, j, k], ...] under {names}")
    return clicks


class ClickGuidanced(MapTransform):
    """Replace ``image`` (model grid) by the refinement input: image, current mask, click guidance.

    The request's clicks (file voxel indices) are moved onto the model grid through the world
    coordinates of the two affines; clicks falling outside the model grid are refused.
    """

    def __init__(self, *, labels: LabelMap) -> None:
        super().__init__(keys="image")
        self.labels = labels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image: MetaTensor = d["image"]
        mask = torch.as_tensor(d.pop("label"))[0].long()
        mask[mask > len(self.labels.names)] = 0  # unannotated voxels: no opinion of the mask
        shape = tuple(image.shape[1:])
        channel_of = {BACKGROUND: 0, **{name: index for index, name in self.labels.channel_names().items()}}
        clicks = Clicks()
        for name, points in d["_clicks"].items():
            grid = points_to_model_grid(points, source_affine=image.meta["original_affine"], model_affine=image.affine)
            for point in grid:
                if not all(0 <= v < n for v, n in zip(point, shape, strict=True)):
                    raise InputRejected(f"a click of {name!r} lies outside the image, got {point}")
                clicks.add(Click(point=point, channel=channel_of[name]))
        inputs = refine_inputs(image.as_tensor(), mask, clicks, num_labels=len(self.labels.names))
        d["image"] = MetaTensor(inputs, meta=image.meta, applied_operations=image.applied_operations)
        return d


class RefineInfer(PublishedModelInfer):
    """The refinement network over the image, the current mask and the clicks.

    Args:
        settings: the app's resolved settings.
        store: the refinement network's checkpoint store.
        segment: makes the starting mask when the request brings none: the segmentation
            task's ``__call__`` (returns the label file and its JSON).
        compute: the pool for network passes (None: run in the calling thread).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        store: ModelStore,
        segment: Callable[[dict[str, Any]], tuple[Any, dict[str, Any]]],
        compute: ComputePool | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.segment = segment
        self.compute = compute
        self._loaded: dict[str, PublishedModel] = {}
        self._pre = load_transforms(settings.preset, labels=settings.labels)
        super().__init__(
            path=str(store.checkpoint_path),
            network=build_network(refine_spec(settings.network)),
            type=InferType.DEEPEDIT,
            labels=settings.labels.to_dict(),
            dimension=3,
            description="Corrects a mask around positive / negative clicks (DeepEdit click convention)",
            roi_size=settings.preset.roi_size,
            preload=False,
            config={"device": settings.device, "result_extension": ".nii.gz"},
        )

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        return [DeleteItemsd(keys="image_path"), *self._pre, ClickGuidanced(labels=self.settings.labels)]

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[Any, dict[str, Any]]:
        info = self.store.info()
        if info is None or not info.trained:
            raise InputRejected(
                "the refine network is not trained yet: it trains with the segmentation model once labels arrive",
                status=409,
            )
        clicks = parse_clicks(request, self.settings.labels)
        request = {key: value for key, value in request.items() if key not in clicks}
        request["_clicks"] = clicks
        if not request.get("label"):
            start = {k: v for k, v in request.items() if k not in ("_clicks", "label")}
            label, _ = self.segment(start)
            request["label"] = label
        compute = super().__call__
        if self.compute is None:
            label, result = compute(request, callbacks)
        else:
            label, result = self.compute.run(compute, request, callbacks)
        keep_mask_away_from_clicks(request["label"], label, clicks, spacing=self.settings.preset.spacing)
        return label, result


def keep_mask_away_from_clicks(
    mask_file: str, refined_file: str, clicks: dict[str, list[list[float]]], *, spacing: Sequence[float] | None
) -> None:
    """Rewrite ``refined_file`` (in place, atomically) to the current mask beyond :data:`LOCAL_RADIUS` of every click.

    Both files are on the image's grid; the radius is in model-grid voxels (the preset
    spacing, in mm), measured in mm on the image's grid by
    :func:`activelabel.ml.interaction.merge_near_clicks`, the merge the benchmarks apply.
    """
    refined_image = nib.load(refined_file)
    refined = np.asarray(refined_image.dataobj)
    mask = np.asarray(nib.load(mask_file).dataobj).reshape(refined.shape)
    on_grid = [
        tuple(int(np.clip(round(v), 0, n - 1)) for v, n in zip(point, refined.shape, strict=True))
        for points in clicks.values()
        for point in points
    ]
    if not on_grid:
        return
    voxel = [float(v) for v in refined_image.header.get_zooms()[:3]]
    radius_mm = LOCAL_RADIUS * (min(spacing) if spacing else min(voxel))
    merged = merge_near_clicks(mask, refined, Clicks(by_channel={0: on_grid}), radius=radius_mm, sampling=voxel)
    merged = merged.astype(refined.dtype)
    out = nib.Nifti1Image(merged, refined_image.affine, refined_image.header)
    suffix = ".nii.gz" if str(refined_file).endswith(".nii.gz") else Path(refined_file).suffix
    atomic_write(Path(refined_file), lambda tmp: nib.save(out, str(tmp)), suffix=suffix)


def ensure_refine_model(store: ModelStore, settings: Settings) -> None:
    """Publish the untrained refinement network (version 0) when none exists, so training can warm-start."""
    store.ensure_initial(refine_spec(settings.network), settings.labels.to_dict(), seed=settings.seed)
