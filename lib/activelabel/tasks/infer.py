"""The ``segmentation`` infer task: multi-label 3D segmentation in the image's own geometry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from monai.inferers import Inferer
from monai.transforms import Activationsd, AsDiscreted, DeleteItemsd, EnsureTyped, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from torch import nn

from activelabel.config import Settings
from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.inference import PublishedModel, sliding_window
from activelabel.ml.networks import build_network
from activelabel.ml.regrid import RestoreToImageGridd
from activelabel.ml.transforms import channels_to_label_values, inference_transforms


class SegmentationInfer(BasicInferTask):
    """Sliding-window UNet segmentation returning a label map on the input's voxel grid.

    The pre-processing (RAS, preset spacing, intensity) is inverted on the label map with
    nearest-neighbour interpolation, so the written label has the image's shape and affine.
    Argmax and label values are computed on the model grid; only the uint8 (or int32) label
    is full-size on the image grid, restored slab by slab (see :mod:`activelabel.ml.regrid`).
    The network is reloaded whenever a newer checkpoint is published; the result JSON
    names the model version that produced it.

    Args:
        settings: the app's resolved settings.
        store: the model's checkpoint store.
    """

    def __init__(self, *, settings: Settings, store: ModelStore) -> None:
        self.settings = settings
        self.store = store
        self._pre = inference_transforms(settings.preset)
        self._loaded: dict[str, PublishedModel] = {}
        super().__init__(
            path=str(store.checkpoint_path),
            network=build_network(settings.network),
            type=InferType.SEGMENTATION,
            labels=settings.labels.to_dict(),
            dimension=3,
            description="3D multi-label segmentation (UNet with dropout, sliding window)",
            roi_size=settings.preset.roi_size,
            preload=settings.preload,
            config={"device": settings.device, "result_extension": ".nii.gz"},
        )

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        # MONAI's Spacingd treats every "image_*" key as image metadata and fails on the
        # "image_path" string MONAI Label adds; the writer takes its extension from config.
        return [DeleteItemsd(keys="image_path"), *self._pre.transforms]

    def inferer(self, data: dict[str, Any] | None = None) -> Inferer:
        return sliding_window(self.settings.preset.roi_size, overlap=self.settings.sw_overlap)

    def inverse_transforms(self, data: dict[str, Any] | None = None) -> None:
        return None

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        return [
            EnsureTyped(keys="pred", device="cpu"),
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys="pred", argmax=True),
            channels_to_label_values("pred", self.settings.labels),
            RestoreToImageGridd(keys="pred", image_key="image", nearest=True),
            SqueezeDimd(keys="pred", dim=0),
        ]

    def _get_network(self, device: str, data: dict[str, Any] | None) -> nn.Module:
        """The published network, reloaded when the checkpoint file changes."""
        published = self._loaded.setdefault(device, PublishedModel(self.store, device=device))
        network, info = published.get()
        if data is not None:
            data["model_version"] = info.version
        return network

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        label, result = super().writer(data, extension=extension, dtype=dtype)
        result = dict(result or {})
        result["model_version"] = data.get("model_version")
        return label, result

    def clear(self) -> None:
        self._loaded.clear()
        super().clear()
