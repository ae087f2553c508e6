"""Click-based correction: positive and negative points per segment, as the server's refine task takes them.

The clinician clicks in Slicer's views, which give points in RAS millimetres.  The server's
``refine`` task takes MONAI Label's DeepEdit convention: for each label name a list of
positive clicks and ``"background"`` for the negative ones, each ``[i, j, k]``, a voxel index
into the image array as stored in the NIfTI file.  :meth:`ClickSet.params` converts with a 4x4
RAS-to-IJK matrix: the inverse of the file's affine (see
:func:`~ActiveLabelLib.conversions.nifti_geometry`).  Slicer's own ``GetRASToIJKMatrix`` is the
same matrix except for left-handed NIfTI grids, whose k axis ITK reverses on reading.
Plain Python and NumPy, like the rest of this package.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import ActiveLabelError

BACKGROUND = "background"
"""The DeepEdit key of the negative clicks (and so a name no label may have)."""

Point = tuple[float, float, float]


@dataclass(frozen=True)
class ClickSet:
    """The clicks placed on one image: positive and negative RAS points (mm) by segment name.

    A positive click says "this voxel belongs to the segment", a negative one "it does not".
    """

    positive: Mapping[str, tuple[Point, ...]] = field(default_factory=dict)
    negative: Mapping[str, tuple[Point, ...]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        *,
        positive: Mapping[str, Iterable[Sequence[float]]] | None = None,
        negative: Mapping[str, Iterable[Sequence[float]]] | None = None,
    ) -> ClickSet:
        """A click set from plain point lists (segments without points are dropped).

        Raises:
            ActiveLabelError: a point that is not three finite numbers, or a segment named ``background``.
        """
        return cls(positive=_points_by_name(positive or {}), negative=_points_by_name(negative or {}))

    @property
    def labels(self) -> tuple[str, ...]:
        """The segments that have a click, sorted by name: the ones a refinement replaces."""
        return tuple(sorted(set(self.positive) | set(self.negative)))

    @property
    def empty(self) -> bool:
        """Whether no click was placed."""
        return not self.labels

    def count(self, name: str) -> tuple[int, int]:
        """How many positive and negative clicks segment ``name`` has."""
        return len(self.positive.get(name, ())), len(self.negative.get(name, ()))

    def text(self, name: str | None) -> str:
        """e.g. ``liver: 3 positive, 1 negative click(s)`` for the panel (``name``: the selected segment)."""
        if name is None:
            return "select a segment to place clicks on"
        positive, negative = self.count(name)
        others = sum(sum(self.count(label)) for label in self.labels if label != name)
        more = f"; {others} on other segments" if others else ""
        return f"{name}: {positive} positive, {negative} negative click(s){more}"

    def params(
        self,
        *,
        ras_to_ijk: np.ndarray | Sequence[Sequence[float]],
        shape: Sequence[int],
        label_names: Iterable[str] = (),
    ) -> dict[str, list[list[int]]]:
        """The refine task's click parameters: ``{label: [[i, j, k], ...], "background": [...]}``.

        Every name of ``label_names`` is present (an empty list when it has no click), so the
        server sees each label; negative clicks of every segment go to ``background``, in the
        order of the segments' names.

        Args:
            ras_to_ijk: 4x4 matrix from RAS mm to the image file's voxel indices.
            shape: the image array's shape (i, j, k); a click outside it is refused.
            label_names: the server's labels; a click on another segment is refused.

        Raises:
            ActiveLabelError: a malformed matrix, a click outside the image or on an unknown segment.
        """
        known = list(label_names)
        if known:
            unknown = [name for name in self.labels if name not in known]
            if unknown:
                raise ActiveLabelError(
                    f"clicks on segment {unknown[0]!r}, which is not one of the server's labels "
                    f"({', '.join(known)}); got clicks on {', '.join(self.labels)}."
                )
        matrix = _matrix(ras_to_ijk)
        params: dict[str, list[list[int]]] = {name: [] for name in known}
        for name in self.labels:
            params[name] = voxel_indices(self.positive.get(name, ()), ras_to_ijk=matrix, shape=shape)
        params[BACKGROUND] = [
            index
            for name in self.labels
            for index in voxel_indices(self.negative.get(name, ()), ras_to_ijk=matrix, shape=shape)
        ]
        return params


def ras_points_to_ijk(points: Iterable[Sequence[float]], matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Continuous voxel coordinates (n x 3) of RAS points under a 4x4 RAS-to-IJK matrix."""
    array = np.asarray(list(points), dtype=float).reshape(-1, 3)
    homogeneous = np.hstack([array, np.ones((len(array), 1))])
    return (homogeneous @ _matrix(matrix).T)[:, :3]


def voxel_indices(
    points: Iterable[Sequence[float]],
    *,
    ras_to_ijk: np.ndarray | Sequence[Sequence[float]],
    shape: Sequence[int],
) -> list[list[int]]:
    """The voxel ``[i, j, k]`` each RAS point falls in (the nearest voxel centre).

    Raises:
        ActiveLabelError: when a point lies outside the image.
    """
    points = list(points)
    size = tuple(int(value) for value in shape)
    if len(size) != 3:
        raise ActiveLabelError(f"an image shape has three sizes, got {size}.")
    indices = []
    for point, continuous in zip(points, ras_points_to_ijk(points, ras_to_ijk), strict=True):
        index = [math.floor(value + 0.5) for value in continuous]  # voxel centres sit on integers
        if not all(0 <= value < limit for value, limit in zip(index, size, strict=True)):
            ras = ", ".join(f"{value:.1f}" for value in point)
            raise ActiveLabelError(
                f"a click at RAS ({ras}) mm lies outside the image: voxel {tuple(index)}, image shape {size}; "
                "delete it and click inside the image."
            )
        indices.append(index)
    return indices


def _matrix(matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    array = np.asarray(matrix, dtype=float)
    if array.shape != (4, 4):
        raise ActiveLabelError(f"a RAS-to-IJK matrix is 4x4, got shape {array.shape}.")
    if not np.all(np.isfinite(array)) or abs(np.linalg.det(array[:3, :3])) < 1e-12:
        raise ActiveLabelError(f"the RAS-to-IJK matrix is not invertible, got {array.tolist()}.")
    return array


def _points_by_name(points: Mapping[str, Iterable[Sequence[float]]]) -> dict[str, tuple[Point, ...]]:
    result: dict[str, tuple[Point, ...]] = {}
    for name, values in points.items():
        if name == BACKGROUND:
            raise ActiveLabelError(
                f"a segment may not be named {BACKGROUND!r}: the refine task uses it for negative clicks."
            )
        checked = tuple(_point(value) for value in values)
        if checked:
            result[str(name)] = checked
    return result


def _point(value: Sequence[float]) -> Point:
    try:
        x, y, z = (float(item) for item in value)
    except (TypeError, ValueError):
        raise ActiveLabelError(f"a click is three numbers (R, A, S in mm), got {value!r}.") from None
    if not all(math.isfinite(item) for item in (x, y, z)):
        raise ActiveLabelError(f"a click is three finite numbers (R, A, S in mm), got {value!r}.")
    return (x, y, z)
