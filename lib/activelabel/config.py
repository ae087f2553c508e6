"""Typed settings of the ActiveLabel app, in one place.

Values come from MONAI Label's ``--conf KEY VALUE`` pairs first, then from environment
variables ``ACTIVELABEL_<KEY>`` (upper case), then from the defaults below.  Every key is
listed in :data:`KEYS` with its meaning; the README's configuration table is that list.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from activelabel.access.mode import AuthSetting
from activelabel.errors import ConfigError
from activelabel.labelmap import LABELS_FILE, LabelMap
from activelabel.ml.decoder_dropout import McMode
from activelabel.ml.inference import sliding_window
from activelabel.ml.networks import Architecture, DropoutScope, NetworkSpec
from activelabel.ml.planning import (
    Fingerprint,
    PlanningError,
    image_files,
    plan_roi_size,
    plan_spacing,
    read_fingerprint,
)
from activelabel.ml.training import Optimizer, Schedule, TrainOptions, bf16_supported
from activelabel.ml.transforms import Modality, Normalization, Preset, preset_for
from activelabel.ml.uncertainty import UncertaintyMetric
from activelabel.scoring.scorer import ScoringOptions

logger = logging.getLogger(__name__)

ENV_PREFIX = "ACTIVELABEL_"

DEFAULT_APP_DIR = Path(__file__).resolve().parents[2] / "apps" / "radiology_al"
"""The MONAI Label app of this repository, used when no ``--app`` is given."""


def _floats(text: str, count: int) -> tuple[float, ...]:
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) != count:
        raise ValueError(f"expected {count} comma-separated numbers")
    return tuple(float(p) for p in parts)


AUTO = "auto"
"""Value of ``spacing`` and ``roi_size`` planned from the dataset's fingerprint (see :mod:`activelabel.ml.planning`)."""


def _spacing(text: str) -> tuple[float, float, float] | str | None:
    if text.strip().lower() == AUTO:
        return AUTO
    if text.strip().lower() in ("none", "native", ""):
        return None
    values = _floats(text, 3)
    if min(values) <= 0:
        raise ValueError("spacing must be positive")
    return values  # type: ignore[return-value]


def _roi(text: str) -> tuple[int, int, int] | str:
    if text.strip().lower() == AUTO:
        return AUTO
    values = tuple(int(v) for v in _floats(text, 3))
    if min(values) < 8:
        raise ValueError("each roi dimension must be >= 8")
    return values  # type: ignore[return-value]


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(p) for p in text.split(",") if p.strip())
    if len(values) < 2 or min(values) < 1:
        raise ValueError("expected at least two positive integers")
    return values


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be >= 1")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError("must be in [0, 1)")
    return value


def _modalities(text: str) -> tuple[str, ...]:
    values = tuple(p.strip().upper() for p in text.split(",") if p.strip())
    if not values or "SEG" in values:
        raise ValueError("expected image modalities such as CT,MR (SEG series are labels)")
    return values


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must be >= 0")
    return value


@dataclass(frozen=True)
class Key:
    """One configuration key: its default (as text), parser and meaning."""

    default: str | None
    parse: Callable[[str], Any]
    help: str


KEYS: dict[str, Key] = {
    "modality": Key("ct", lambda t: Modality(t.lower()), "ct or mr: intensity normalization and default spacing"),
    "labels": Key(None, str, f"JSON object or file of label name -> value (default: <studies>/{LABELS_FILE})"),
    "spacing": Key(
        AUTO,
        _spacing,
        "target voxel spacing in mm, e.g. 3,3,3; none keeps each image's own; auto: the images' median spacing, "
        "never finer than the modality's (CT 3 mm, MR 1 mm)",
    ),
    "roi_size": Key(
        AUTO,
        _roi,
        "patch size for training and sliding-window inference, e.g. 48,48,48; auto: the images' median extent "
        "within the modality's voxel budget (CT 96^3, MR 48^3)",
    ),
    "channels": Key("16,32,64,128", _ints, "UNet feature maps per level"),
    "dropout": Key("0.2", _fraction, "dropout probability of the UNet blocks that drop out (MC dropout needs > 0)"),
    "architecture": Key(
        "dynunet",
        lambda t: Architecture(t.strip().lower()),
        "segmentation network: dynunet (nnU-Net's plain UNet) or unet (MONAI UNet with residual units)",
    ),
    "deep_supervision": Key("2", _non_negative_int, "extra lower-resolution training heads (dynunet only)"),
    "normalization": Key(
        "auto",
        str,
        "intensity normalization: auto (CT: fixed HU window; MR: z-score per volume), zscore, or percentile",
    ),
    "dropout_scope": Key(
        "bottleneck",
        lambda t: DropoutScope(t.strip().lower()),
        "blocks with dropout: bottleneck (the deepest block only), decoder (the up path) or all; keep mc_mode "
        "at or before where dropout starts",
    ),
    "mc_samples": Key("4", _positive_int, "Monte-Carlo dropout samples per volume when scoring"),
    "uncertainty_metric": Key(
        "mutual_information",
        lambda t: UncertaintyMetric(t.lower()),
        "score ranked by most_uncertain: entropy, mutual_information or variance",
    ),
    "foreground_dilation": Key("3", int, "voxels by which the predicted foreground grows before aggregating"),
    "audit_dice": Key("0.8", _fraction, "Dice at which an auto-label passes its audit (triage calibrates for it)"),
    "triage_accuracy": Key(
        "0.95",
        _fraction,
        "share of accepted auto-labels that should pass their audit; auto-labels whose predicted quality is below "
        "the threshold calibrated for it go back to the labeling pool",
    ),
    "sw_overlap": Key("0.5", _fraction, "overlap of sliding-window inference and validation (nnU-Net's 0.5)"),
    "max_epochs": Key(
        "20", _positive_int, "epochs at most per training run; the step cap is max_epochs x steps_per_epoch"
    ),
    "steps_per_epoch": Key(
        "100", _non_negative_int, "optimizer steps between validations (0: one step per training volume)"
    ),
    "patience": Key(
        "5", _non_negative_int, "stop training after this many epochs without a better validation Dice (0: never)"
    ),
    "optimizer": Key("adamw", lambda t: Optimizer(t.strip().lower()), "adamw, adam or sgd (nnU-Net's, momentum 0.99)"),
    "lr_schedule": Key("cosine", lambda t: Schedule(t.strip().lower()), "cosine, poly or constant, over the step cap"),
    "learning_rate": Key("0.003", float, "initial learning rate"),
    "mirror_axes": Key(
        "auto",
        str,
        "axes flipped in training augmentation: auto (all three, but not left-right when a label name says left or "
        "right), none, or e.g. 1,2",
    ),
    "test_time_mirroring": Key("false", _bool, "validate on the mean over the flips of mirror_axes (2^axes passes)"),
    "foreground_share": Key("0.33", _fraction, "share of training patches centred on a labeled voxel"),
    "bf16": Key(
        "auto",
        str,
        "train in bfloat16 autocast: auto (where the CPU has AVX512-BF16/AMX or the GPU supports it), true, false",
    ),
    "val_split": Key("0.2", _fraction, "fraction of labeled volumes held out for validation"),
    "samples_per_volume": Key("2", _positive_int, "patches per optimizer step (cropped from one volume)"),
    "seed": Key("0", int, "seed of the initial weights, the validation split and training"),
    "device": Key("auto", str, "auto, cpu or cuda[:N]"),
    "model_dir": Key(None, str, "checkpoint directory (default: <state_dir>/model)"),
    "state_dir": Key(None, str, "scores and model state (default: <studies>/.activelabel, or <app>/state for PACS)"),
    "preload": Key("false", _bool, "load the network when the server starts"),
    "retrain_after": Key("10", int, "start training after this many new labels (0: only on request)"),
    "lease_seconds": Key("1800", _positive_int, "how long a served volume stays reserved for its client"),
    "readers": Key(
        "1", _positive_int, "distinct readers whose final labels a volume needs; above 1 training uses their consensus"
    ),
    "stop_window": Key("5", _positive_int, "submissions per round when the stop rule judges a plateau"),
    "stop_min_agreement": Key(
        "0.8", _fraction, "agreement (Dice of pre-segmentation vs submission) that stops labeling on a plateau"
    ),
    "stop_max_gap": Key(
        "0.05", _fraction, "stop once agreement is within this of validation Dice (the picks have caught up)"
    ),
    "users_file": Key(None, str, "JSON file of users, roles and credential hashes (see `activelabel users add`)"),
    "auth": Key(
        "auto",
        lambda t: AuthSetting(t.strip().lower()),
        "auto (on with a users file, off on loopback), on, or off (no access control on any address)",
    ),
    "max_upload_mb": Key("2048", _positive_int, "largest request body in MiB; larger uploads get 413"),
    "upload_stall_seconds": Key(
        "30", _positive_float, "a request body that sends nothing for this long, or is slower on average, gets 408"
    ),
    "upload_min_kib_s": Key(
        "16", _non_negative_float, "slowest average upload rate in KiB/s accepted once upload_stall_seconds have passed"
    ),
    "pacs_user": Key(None, str, "DICOMweb user name of the PACS (studies given as a URL)"),
    "pacs_password": Key(None, str, "DICOMweb password of the PACS (prefer the ACTIVELABEL_PACS_PASSWORD variable)"),
    "pacs_modalities": Key("CT,MR", _modalities, "series modalities listed as images from the PACS"),
    "pacs_timeout": Key("30", _positive_float, "seconds before a PACS request counts as failed (503)"),
    "pacs_list_seconds": Key("10", _non_negative_float, "seconds a PACS series listing is reused"),
    "task_worker": Key(
        "true", _bool, "fork train/scoring tasks from a pre-imported worker (false: a fresh Python process each)"
    ),
    "ray_address": Key(None, str, "HOST:PORT of a Ray cluster's head: scoring runs as Ray tasks there"),
    "scoring_workers": Key(
        None,
        _positive_int,
        "scoring workers: local processes when above 1, or Ray tasks at once with ray_address "
        "(default: 1 locally, scoring inside the scoring task; one per cluster CPU on Ray)",
    ),
    "presegment": Key(
        "true",
        _bool,
        "keep the label of each scored volume's mean prediction, so pre-segmentations are served without a "
        "network pass",
    ),
    "presegment_refresh": Key(
        "8",
        _non_negative_int,
        "after each new model, re-score at least this many top candidates (and twice the clinicians holding a lease)",
    ),
    "rescore_after_training": Key(
        "true",
        _bool,
        "score the unlabeled volumes again (most uncertain first) once a new model is published and a label arrives",
    ),
    "infer_workers": Key("1", _positive_int, "network passes of interactive requests run at once"),
    "infer_queue": Key(
        "4", _non_negative_int, "interactive network passes that may wait for a worker; beyond that: 503 Retry-After"
    ),
    "task_niceness": Key(
        "10", _non_negative_int, "how much lower the CPU priority of training, scoring and batch tasks is (nice)"
    ),
    "refine_steps": Key(
        "300",
        _non_negative_int,
        "optimizer steps of the click-conditioned refine network after each segmentation training run (0: none)",
    ),
    "mc_mode": Key(
        "bottleneck",
        McMode.parse,
        "MC-dropout layers sampled when scoring: full (every layer, one network pass per sample), batched (every "
        "layer, samples as one batch), or only from the bottleneck, decoder (up path) or head (output block) on, "
        "the rest computed once per window (see bench/cheap_uncertainty.py)",
    ),
}


@dataclass(frozen=True)
class Settings:
    """Resolved settings of one app instance."""

    preset: Preset
    labels: LabelMap
    network: NetworkSpec
    mc_samples: int
    uncertainty_metric: UncertaintyMetric
    foreground_dilation: int
    sw_overlap: float
    max_epochs: int
    learning_rate: float
    val_split: float
    samples_per_volume: int
    seed: int
    device: str
    state_dir: Path
    model_dir: Path
    preload: bool
    stop_window: int
    stop_min_agreement: float
    stop_max_gap: float
    lease_seconds: int
    retrain_after: int
    readers: int = 1
    task_worker: bool = True
    ray_address: str | None = None
    scoring_workers: int | None = None
    mc_mode: McMode = McMode.BOTTLENECK
    steps_per_epoch: int = 100
    patience: int = 5
    optimizer: Optimizer = Optimizer.ADAMW
    lr_schedule: Schedule = Schedule.COSINE
    mirror_axes: tuple[int, ...] = ()
    test_time_mirroring: bool = False
    foreground_share: float = 0.33
    bf16: bool = False
    audit_dice: float = 0.8
    triage_accuracy: float = 0.95
    presegment: bool = True
    presegment_refresh: int = 8
    rescore_after_training: bool = True
    infer_workers: int = 1
    infer_queue: int = 4
    task_niceness: int = 10
    refine_steps: int = 300

    def train_options(self, *, seed: int, **overrides: Any) -> TrainOptions:
        """The training recipe of these settings (``overrides`` replace any of its fields).

        One place for the server's trainer, the simulator and the benchmarks, so all of them
        train the same way.
        """
        options = TrainOptions(
            max_epochs=self.max_epochs,
            learning_rate=self.learning_rate,
            samples_per_volume=self.samples_per_volume,
            seed=seed,
            overlap=self.sw_overlap,
            steps_per_epoch=self.steps_per_epoch or None,
            optimizer=self.optimizer,
            schedule=self.lr_schedule,
            patience=self.patience or None,
            mirror_axes=self.mirror_axes,
            test_time_mirroring=self.test_time_mirroring,
            foreground_share=self.foreground_share,
            bf16=self.bf16,
        )
        return replace(options, **overrides)

    def scoring_options(self, **overrides: Any) -> ScoringOptions:
        """How these settings score a volume (``overrides`` replace any field: samples, force, ...)."""
        options = ScoringOptions(
            samples=self.mc_samples,
            dilation=self.foreground_dilation,
            overlap=self.sw_overlap,
            mode=self.mc_mode,
            bf16=self.bf16,
            presegment=self.presegment,
        )
        return replace(options, **overrides)

    def inferer(self) -> SlidingWindowInferer:
        """The sliding-window inferer of these settings (patch size, overlap, bf16)."""
        return sliding_window(self.preset.roi_size, overlap=self.sw_overlap, bf16=self.bf16)

    @property
    def scores_path(self) -> Path:
        return self.state_dir / "scores.sqlite"

    @property
    def presegmentations_dir(self) -> Path:
        return self.state_dir / "presegmentations"

    @property
    def submissions_path(self) -> Path:
        return self.state_dir / "submissions.sqlite"

    @property
    def leases_path(self) -> Path:
        return self.state_dir / "leases.sqlite"

    @property
    def label_versions_dir(self) -> Path:
        return self.state_dir / "label-versions"

    @property
    def label_versions_path(self) -> Path:
        return self.state_dir / "label-versions.sqlite"

    @property
    def audits_path(self) -> Path:
        return self.state_dir / "audits.sqlite"


def _raw(key: str, conf: Mapping[str, str], env: Mapping[str, str]) -> str | None:
    if key in conf and conf[key] is not None:
        return str(conf[key])
    return env.get(ENV_PREFIX + key.upper())


def _value(key: str, conf: Mapping[str, str], env: Mapping[str, str]) -> Any:
    spec = KEYS[key]
    text = _raw(key, conf, env)
    if text is None:
        text = spec.default
    if text is None:
        return None
    try:
        return spec.parse(text)
    except ValueError as error:
        raise ConfigError(f"invalid value {text!r} for '{key}': {error}") from None


def setting(key: str, *, conf: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> Any:
    """One key's parsed value from ``conf``, then the environment, then its default.

    Raises:
        ConfigError: when the value does not parse.
    """
    return _value(key, dict(conf or {}), os.environ if env is None else env)


def resolve_studies(studies: str) -> str:
    """A DICOMweb URL as given, a studies folder as its absolute path.

    Raises:
        ConfigError: when the folder does not exist.
    """
    if is_remote(studies):
        return studies
    path = Path(studies).resolve()
    if not path.is_dir():
        raise ConfigError(f"studies folder not found: {path}")
    return str(path)


def is_remote(studies: str) -> bool:
    """Whether ``studies`` names a DICOMweb server (an ``http(s)://`` URL) rather than a folder."""
    return studies.startswith(("http://", "https://"))


def _fingerprint(studies: str) -> Fingerprint | None:
    """The image fingerprint of a studies folder; ``None`` for a PACS, an empty folder or unreadable headers."""
    folder = Path(studies)
    if is_remote(studies) or not folder.is_dir():
        return None
    files = image_files(folder)
    if not files:
        return None
    try:
        return read_fingerprint(files)
    except PlanningError as error:
        logger.warning("spacing and roi_size fall back to the modality preset: %s", error)
        return None


def _default_state_dir(studies: str, app_dir: str) -> Path:
    if is_remote(studies):
        digest = hashlib.sha1(studies.encode()).hexdigest()[:12]
        return Path(app_dir) / "state" / digest
    return Path(studies) / ".activelabel"


def _labels(text: str | None, studies: str) -> LabelMap:
    if text is None:
        candidate = Path(studies) / LABELS_FILE
        if is_remote(studies) or not candidate.is_file():
            raise ConfigError(
                f"no labels configured: put a {LABELS_FILE} of name -> value into the studies folder "
                "or pass --conf labels '{\"liver\": 1}' (a JSON object or a file path)"
            )
        text = str(candidate)
    try:
        return LabelMap.from_json(text)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"invalid value for 'labels': {error}") from None


LATERAL = re.compile(r"(left|right|(^|[_\s-])[lr]($|[_\s-]))", re.IGNORECASE)
"""Label names that say a side: flipping left and right would swap their meaning."""


def _mirror_axes(text: str, labels: LabelMap) -> tuple[int, ...]:
    """The ``mirror_axes`` setting as axes: ``auto`` keeps the left-right axis (0 in RAS) only
    when no label name names a side."""
    lowered = text.strip().lower()
    if lowered == "auto":
        lateral = any(LATERAL.search(name) for name in labels.names)
        return (1, 2) if lateral else (0, 1, 2)
    if lowered in ("none", ""):
        return ()
    try:
        axes = tuple(sorted({int(p) for p in lowered.split(",") if p.strip()}))
    except ValueError:
        raise ConfigError(f"invalid value {text!r} for 'mirror_axes': expected auto, none or axes like 0,1,2") from None
    if any(axis not in (0, 1, 2) for axis in axes):
        raise ConfigError(f"invalid value {text!r} for 'mirror_axes': axes are 0, 1 and 2")
    return axes


def _bf16(text: str, *, device: str) -> bool:
    lowered = text.strip().lower()
    if lowered == "auto":
        return bf16_supported(device)
    try:
        return _bool(lowered)
    except ValueError:
        raise ConfigError(f"invalid value {text!r} for 'bf16': expected auto, true or false") from None


def _device(text: str) -> str:
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return text


def load_settings(
    conf: Mapping[str, str] | None,
    *,
    studies: str,
    app_dir: str,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every key for an app serving ``studies`` from ``app_dir``.

    Keys that are not ours are ignored: MONAI Label passes its own through ``--conf`` too.

    Raises:
        ConfigError: on a value that does not parse, or when no labels are configured.
    """
    conf = dict(conf or {})
    env = os.environ if env is None else env
    values = {key: _value(key, conf, env) for key in KEYS if key != "labels"}
    labels = _labels(_raw("labels", conf, env), studies)
    preset = preset_for(values["modality"])
    budget = int(np.prod(preset.roi_size))
    auto = AUTO in (values["spacing"], values["roi_size"])
    fingerprint = _fingerprint(studies) if auto else None
    if values["spacing"] != AUTO:  # None is a value: keep each image's own spacing
        preset = replace(preset, spacing=values["spacing"])
    elif fingerprint is not None and preset.spacing is not None:
        preset = replace(preset, spacing=plan_spacing(fingerprint, floor=preset.spacing))
    if values["normalization"].strip().lower() != "auto":
        try:
            preset = replace(preset, normalization=Normalization(values["normalization"].strip().lower()))
        except ValueError:
            choices = ", ".join(n.value for n in Normalization)
            raise ConfigError(f"invalid value for 'normalization': choose auto, {choices}") from None
    channels = values["channels"]
    network = NetworkSpec(
        out_channels=labels.num_channels,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        dropout=values["dropout"],
        dropout_scope=values["dropout_scope"].value,
        architecture=values["architecture"].value,
        deep_supervision=(
            min(values["deep_supervision"], len(channels) - 2) if values["architecture"] is Architecture.DYNUNET else 0
        ),
    )
    if values["dropout_scope"] is DropoutScope.BOTTLENECK and values["mc_mode"] in (McMode.DECODER, McMode.HEAD):
        raise ConfigError(
            f"mc_mode {values['mc_mode'].value!r} samples no dropout layer when dropout_scope is 'bottleneck': "
            "use mc_mode bottleneck, batched or full, or dropout_scope decoder or all"
        )
    divisor = network.size_divisor
    if values["roi_size"] != AUTO:
        preset = replace(preset, roi_size=values["roi_size"])
    elif fingerprint is not None:
        roi = plan_roi_size(fingerprint, spacing=preset.spacing, divisor=divisor, voxel_budget=budget)
        preset = replace(preset, roi_size=roi)
    if any(size % divisor for size in preset.roi_size):
        raise ConfigError(f"roi_size {preset.roi_size} must be a multiple of {divisor} for this network")
    state_dir = Path(values["state_dir"]) if values["state_dir"] else _default_state_dir(studies, app_dir)
    model_dir = Path(values["model_dir"]) if values["model_dir"] else state_dir / "model"
    derived = {
        "preset": preset,
        "labels": labels,
        "network": network,
        "device": _device(values["device"]),
        "state_dir": state_dir,
        "model_dir": model_dir,
        "mirror_axes": _mirror_axes(values["mirror_axes"], labels),
        "bf16": _bf16(values["bf16"], device=_device(values["device"])),
    }
    # Every other field of Settings is the key of the same name, parsed.
    return Settings(**{f.name: derived[f.name] if f.name in derived else values[f.name] for f in fields(Settings)})
