"""The label names of a project and the integer values that encode them in label maps."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LABELS_FILE = "labels.json"

NOT_ANNOTATED = 255
"""Voxel value of a partial label where nobody annotated: neither background nor any label.

A clinician who draws only some slices of a volume sends the rest as 255; training ignores
those voxels (loss, patch centres, validation Dice).  The same value marks them in the
network's channel space.  No label of a project may use it.
"""


@dataclass(frozen=True)
class LabelMap:
    """Ordered ``name -> value`` pairs; value 0 is background and never named.

    Network output channel ``i`` (``i >= 1``) predicts the ``i``-th label in ascending
    value order, so values need not be contiguous (e.g. TotalSegmentator's 1, 2, 3, 5).
    """

    names: tuple[str, ...]
    values: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("a label map needs at least one label")
        if len(self.names) != len(self.values):
            raise ValueError("names and values must have the same length")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"label names must be unique, got {list(self.names)}")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"label values must be unique, got {list(self.values)}")
        bad = [v for v in self.values if not isinstance(v, int) or isinstance(v, bool) or v < 1]
        if bad:
            raise ValueError(f"label values must be integers >= 1 (0 is background), got {bad}")
        if NOT_ANNOTATED in self.values:
            raise ValueError(f"label value {NOT_ANNOTATED} is reserved for voxels that are not annotated")
        if list(self.values) != sorted(self.values):
            raise ValueError("values must be in ascending order; build label maps with LabelMap.from_mapping")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, int]) -> LabelMap:
        """Build from ``{name: value}``; a ``background: 0`` entry is accepted and dropped."""
        items = [(str(name), value) for name, value in mapping.items() if not (value == 0 and name == "background")]
        for name, value in items:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"label {name!r} has non-integer value {value!r}")
        items.sort(key=lambda item: item[1])
        return cls(names=tuple(n for n, _ in items), values=tuple(v for _, v in items))

    @classmethod
    def from_json(cls, source: str | Path) -> LabelMap:
        """Read ``{name: value}`` from a JSON file, or parse a JSON object given inline."""
        text = str(source)
        if text.lstrip().startswith("{"):
            data = json.loads(text)
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"labels file not found: {path}")
            data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"labels must be a JSON object of name -> value, got {type(data).__name__}")
        return cls.from_mapping(data)

    def to_dict(self) -> dict[str, int]:
        return dict(zip(self.names, self.values, strict=True))

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @property
    def num_channels(self) -> int:
        """Network output channels: background plus one per label."""
        return len(self.values) + 1

    @property
    def allowed_values(self) -> frozenset[int]:
        """Values a label map may contain: background, every label and :data:`NOT_ANNOTATED`."""
        return frozenset((0, *self.values, NOT_ANNOTATED))

    def channel_names(self) -> dict[int, str]:
        """Output channel index -> label name (channel 0 is background)."""
        return {i + 1: name for i, name in enumerate(self.names)}

    def to_channels(self, label: np.ndarray) -> np.ndarray:
        """Map label values to channel indices (:data:`NOT_ANNOTATED` stays; unknown values become background)."""
        lut = np.zeros(max(*self.values, NOT_ANNOTATED) + 1, dtype=np.int64)
        lut[list(self.values)] = np.arange(1, len(self.values) + 1)
        lut[NOT_ANNOTATED] = NOT_ANNOTATED
        label = np.asarray(label).astype(np.int64)
        inside = (label >= 0) & (label < lut.size)
        out = np.zeros_like(label)
        out[inside] = lut[label[inside]]
        return out

    def to_values(self, channels: np.ndarray) -> np.ndarray:
        """Map channel indices back to label values."""
        lut = np.asarray((0, *self.values), dtype=np.int64)
        return lut[np.asarray(channels).astype(np.int64)]


def is_partial(label: np.ndarray) -> bool:
    """Whether a label map leaves some voxels :data:`NOT_ANNOTATED`."""
    return bool(np.any(np.asarray(label) == NOT_ANNOTATED))


def annotated_slices(label: np.ndarray, *, axis: int) -> list[int]:
    """Indices along ``axis`` of the slices holding at least one annotated voxel."""
    array = np.asarray(label)
    if not -array.ndim <= axis < array.ndim:
        raise ValueError(f"axis must be one of the label's {array.ndim} axes, got {axis}")
    other = tuple(a for a in range(array.ndim) if a != axis % array.ndim)
    return np.flatnonzero(np.any(array != NOT_ANNOTATED, axis=other)).tolist()
