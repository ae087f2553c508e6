"""Sparse annotation in Slicer: the slices the server asked for, and a label of only those.

When the server's ``uncertain_slices`` strategy serves a sample it names a few slices of it
(indices along one voxel axis of the image file).  The clinician steps through them and draws
only there; on submit every voxel outside them is sent as :data:`NOT_ANNOTATED`, so training
learns from the drawn slices and ignores the rest.  Plain Python and NumPy, like the rest of
this package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ActiveLabelError

NOT_ANNOTATED = 255
"""Voxel value of a partial label where nobody annotated (the server's ``activelabel.labelmap.NOT_ANNOTATED``)."""


@dataclass
class SliceQueue:
    """The slices to draw in one sample and which one is shown.

    Attributes:
        axis: voxel axis of the image file (0, 1, 2 in NIfTI i, j, k order) the indices run along.
        slices: the slice indices, ascending.
        position: index into ``slices`` of the slice shown now.
    """

    axis: int
    slices: tuple[int, ...]
    position: int = 0

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2):
            raise ActiveLabelError(f"the server named slice axis {self.axis}; expected 0, 1 or 2")
        if not self.slices:
            raise ActiveLabelError("the server named no slices to draw")
        self.slices = tuple(sorted(int(s) for s in self.slices))

    @property
    def current(self) -> int:
        """The slice index shown now."""
        return self.slices[self.position]

    def next(self) -> int:
        """Step to the next slice (stays on the last one) and return its index."""
        self.position = min(self.position + 1, len(self.slices) - 1)
        return self.current

    def previous(self) -> int:
        """Step to the previous slice (stays on the first one) and return its index."""
        self.position = max(self.position - 1, 0)
        return self.current

    @property
    def text(self) -> str:
        """e.g. ``slice 2 of 5 (index 27); draw only slices 12, 27, 40, 51, 63``."""
        listed = ", ".join(str(s) for s in self.slices)
        return f"slice {self.position + 1} of {len(self.slices)} (index {self.current}); draw only slices {listed}"


def keep_slices(label_map: np.ndarray, *, axis: int, slices: Sequence[int]) -> np.ndarray:
    """A copy of ``label_map`` with every voxel outside ``slices`` along ``axis`` set to :data:`NOT_ANNOTATED`.

    Raises:
        ActiveLabelError: when a slice index lies outside the array.
    """
    array = np.asarray(label_map)
    depth = array.shape[axis]
    outside = [s for s in slices if not 0 <= s < depth]
    if outside:
        raise ActiveLabelError(f"slices {outside} lie outside the image's {depth} slices along axis {axis}")
    if np.any(array == NOT_ANNOTATED):
        raise ActiveLabelError(f"the segmentation uses value {NOT_ANNOTATED}, which means 'not annotated'")
    partial = np.full_like(array, NOT_ANNOTATED)
    index: list[object] = [slice(None)] * array.ndim
    index[axis] = list(slices)
    partial[tuple(index)] = array[tuple(index)]
    return partial
