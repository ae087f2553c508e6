"""Versioned model checkpoints of one labeling project.

A checkpoint file holds ``{"model": state_dict, "activelabel": info}`` so the weights and
the version that describes them can never disagree; a JSON copy of the info sits beside it
for cheap status queries.  Version 0 is the deterministic untrained network; each finished
training run publishes the next version.  Both files are replaced atomically.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from activelabel.fsutil import atomic_write, atomic_write_json, read_json
from activelabel.ml.networks import NetworkSpec, initial_state


@dataclass(frozen=True)
class ModelInfo:
    """What a published model is: its version, architecture, labels and validation scores."""

    version: int
    spec: dict[str, Any]
    labels: dict[str, int]
    published_at: float
    val_dice: dict[str, float] = field(default_factory=dict)
    val_mean_dice: float | None = None
    train_count: int = 0
    val_count: int = 0
    epochs: int = 0
    best_epoch: int | None = None
    calibration: dict[str, Any] | None = None
    """The auto-label quality threshold calibrated on the validation volumes
    (:class:`activelabel.scoring.triage.Calibration` as a dict); ``None`` without validation."""
    origin: str | None = None
    """Where weights not trained on this project's labels came from (a starter model, an imported
    checkpoint); ``None`` for the project's own training runs."""

    @property
    def trained(self) -> bool:
        return self.version > 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["trained"] = self.trained
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class ModelStore:
    """The checkpoint directory of one model.

    Args:
        directory: where ``<name>.pt`` and ``<name>.json`` live.
        name: model name (the MONAI Label infer/train task name).
    """

    def __init__(self, directory: str | Path, *, name: str = "segmentation") -> None:
        self.directory = Path(directory)
        self.name = name
        self.checkpoint_path = self.directory / f"{name}.pt"
        self.info_path = self.directory / f"{name}.json"
        self._lock_path = self.directory / f".{name}.lock"

    def info(self) -> ModelInfo | None:
        """The published model's info, or ``None`` before anything was published."""
        data = read_json(self.info_path)
        return ModelInfo.from_dict(data) if data else None

    def load(self, map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], ModelInfo]:
        """Weights and info read together from the checkpoint file."""
        if not self.checkpoint_path.is_file():
            raise FileNotFoundError(f"no checkpoint at {self.checkpoint_path}")
        checkpoint = torch.load(self.checkpoint_path, map_location=map_location, weights_only=True)
        return checkpoint["model"], ModelInfo.from_dict(checkpoint["activelabel"])

    def ensure_initial(self, spec: NetworkSpec, labels: dict[str, int], *, seed: int = 0) -> ModelInfo:
        """Publish version 0 (untrained, seeded weights) unless a trained model exists.

        An untrained version 0 for another network (the settings changed before any training)
        is replaced: it holds nothing learned.

        Raises:
            ValueError: when the existing trained model was built for other labels or another network.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        with FileLock(self._lock_path):
            existing = self.info()
            if existing is not None and self.checkpoint_path.is_file():
                untrained = existing.version == 0 and dict(existing.labels) == dict(labels)
                if not (untrained and NetworkSpec.from_dict(existing.spec) != spec):
                    self._check_compatible(existing, spec, labels)
                    return existing
            info = ModelInfo(version=0, spec=spec.to_dict(), labels=dict(labels), published_at=time.time())
            self._write(initial_state(spec, seed=seed), info)
            return info

    def publish(self, state_dict: dict[str, torch.Tensor], **fields: Any) -> ModelInfo:
        """Store new weights as the next version; ``fields`` fill :class:`ModelInfo`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with FileLock(self._lock_path):
            current = self.info()
            version = (current.version if current else -1) + 1
            info = ModelInfo(version=version, published_at=time.time(), **fields)
            self._write(state_dict, info)
            return info

    def export(self, destination: str | Path) -> ModelInfo:
        """Copy the published checkpoint (weights and info in one file) to ``destination``, atomically.

        Raises:
            FileNotFoundError: when nothing was published.
        """
        with FileLock(self._lock_path):
            state, info = self.load()
            payload = {"model": state, "activelabel": info.to_dict()}
            atomic_write(Path(destination), lambda tmp: torch.save(payload, tmp), suffix=".pt")
        return info

    def import_checkpoint(self, source: str | Path, *, spec: NetworkSpec, labels: dict[str, int]) -> ModelInfo | None:
        """Publish the weights of a checkpoint file (one :meth:`export` wrote) as the next version.

        A file imported before (same SHA-256, recorded in ``<name>.imports.json``) is not
        imported again, so a server started with the same ``--model`` every time keeps what it
        trained since; returns ``None`` then.

        Raises:
            ValueError: the file is not an ActiveLabel checkpoint, or it was built for other
                labels or another network than the project's.
        """
        source = Path(source)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        imports_path = self.directory / f"{self.name}.imports.json"
        imported = read_json(imports_path, default={})
        if digest in imported:
            return None
        try:
            checkpoint = torch.load(source, map_location="cpu", weights_only=True)
            state, info = expand_state(checkpoint), ModelInfo.from_dict(checkpoint["activelabel"])
        except Exception as error:  # torch raises many types for a file that is not a checkpoint
            raise ValueError(f"{source} is not an ActiveLabel checkpoint ({type(error).__name__}: {error})") from None
        self._check_compatible(info, spec, labels, where=str(source))
        self.ensure_initial(spec, labels)  # version 0 first: an imported model is a trained version (>= 1)
        self.directory.mkdir(parents=True, exist_ok=True)
        published = self.publish(
            state,
            spec=info.spec,
            labels=info.labels,
            val_dice=info.val_dice,
            val_mean_dice=info.val_mean_dice,
            epochs=info.epochs,
            best_epoch=info.best_epoch,
            calibration=info.calibration,
            origin=f"imported from {source.name} (sha256 {digest[:16]})" + (f"; {info.origin}" if info.origin else ""),
        )
        atomic_write_json(imports_path, {**imported, digest: {"file": str(source), "version": published.version}})
        return published

    def _write(self, state_dict: dict[str, torch.Tensor], info: ModelInfo) -> None:
        payload = {"model": {k: v.detach().cpu() for k, v in state_dict.items()}, "activelabel": info.to_dict()}
        atomic_write(self.checkpoint_path, lambda tmp: torch.save(payload, tmp))
        atomic_write_json(self.info_path, info.to_dict())

    def _check_compatible(
        self, info: ModelInfo, spec: NetworkSpec, labels: dict[str, int], *, where: str | None = None
    ) -> None:
        where = where or f"the model in {self.directory}"
        if dict(info.labels) != dict(labels):
            raise ValueError(
                f"{where} was trained for labels {info.labels}, but the app is configured "
                f"with {labels}; point model_dir elsewhere or restore the original labels"
            )
        if NetworkSpec.from_dict(info.spec) != spec:
            raise ValueError(
                f"{where} has architecture {info.spec}, but the app is configured with "
                f"{spec.to_dict()}; point model_dir elsewhere or restore the original network settings (a model "
                "trained before DynUNet became the default needs --conf architecture unet --conf dropout_scope all)"
            )


def compact_state(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A small checkpoint payload for shipping: shared tensors once, weights in int8.

    A tensor held under two names (a DynUNet's deep-supervision heads) is stored once with
    an alias; float weights with two or more dimensions become int8 with one float16 scale per
    output channel (symmetric, the largest magnitude of the channel maps to 127); the other
    float tensors (biases, norms) become float16.  :func:`expand_state` reverses it.
    """
    model: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    scales: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    for key, value in state_dict.items():
        identity = (value.data_ptr(), tuple(value.shape))
        if identity in seen:
            aliases[key] = seen[identity]
            continue
        seen[identity] = key
        if value.is_floating_point() and value.ndim >= 2:
            flat = value.detach().float().reshape(value.shape[0], -1)
            scale = flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            model[key] = torch.round(flat / scale[:, None]).to(torch.int8).reshape(value.shape)
            scales[key] = scale.half()
        else:
            model[key] = value.detach().half() if value.is_floating_point() else value.detach()
    return {"model": model, "aliases": aliases, "int8_scales": scales}


def expand_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The float32 state dict of a checkpoint payload, plain or made by :func:`compact_state`."""
    scales = checkpoint.get("int8_scales") or {}
    state: dict[str, torch.Tensor] = {}
    for key, value in checkpoint["model"].items():
        if key in scales:
            shape = value.shape
            value = value.float().reshape(shape[0], -1) * scales[key].float()[:, None]
            value = value.reshape(shape)
        state[key] = value.float() if value.is_floating_point() else value
    for key, canonical in (checkpoint.get("aliases") or {}).items():
        state[key] = state[canonical]
    return state
