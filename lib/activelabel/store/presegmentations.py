"""Pre-segmentations computed ahead of the request, one per (image, model version).

Scoring already runs the network over every unlabeled volume; the label of its mean
prediction, restored onto the image's own voxel grid, is kept here as compressed NIfTI so
that ``POST /infer/segmentation`` can answer at once.  Layout::

    <folder>/<image id>/v<model version>.nii.gz

Each file is written to a temporary name and renamed into place (a reader sees a whole file
or none), and storing version *v* removes the image's older versions: a pre-segmentation
of an older model is never served.  The folder is the index; nothing else needs to stay
consistent with it, so a scoring process and the server may write and read it at once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from activelabel.fsutil import atomic_write
from activelabel.store.identifiers import check_name

SUFFIX = ".nii.gz"


@dataclass(frozen=True)
class CacheCounts:
    """Hits and misses of the server's segmentation requests since it started."""

    hits: int
    misses: int

    def to_dict(self) -> dict[str, int | float | None]:
        total = self.hits + self.misses
        return {**asdict(self), "hit_rate": self.hits / total if total else None}


class PresegmentationStore:
    """Label files of the images' mean MC-dropout predictions, by model version.

    Args:
        folder: where the files live (created on first write).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def path(self, image_id: str, model_version: int) -> Path:
        """Where the pre-segmentation of ``image_id`` by ``model_version`` is kept."""
        return self.folder / check_name(image_id, what="image id") / f"v{int(model_version)}{SUFFIX}"

    def get(self, image_id: str, model_version: int) -> Path | None:
        """The stored file of ``image_id`` made by exactly ``model_version``, or None."""
        path = self.path(image_id, model_version)
        return path if path.is_file() else None

    def put(self, image_id: str, model_version: int, source: str | Path) -> Path:
        """Store a copy of the label file ``source``, replacing the image's older versions."""
        return self.write(image_id, model_version, lambda tmp: shutil.copyfile(source, tmp))

    def write(self, image_id: str, model_version: int, write: Callable[[Path], None]) -> Path:
        """Store what ``write(tmp)`` writes to a ``.nii.gz`` path, atomically; the image's older versions go."""
        path = atomic_write(self.path(image_id, model_version), write, suffix=SUFFIX)
        for other in path.parent.glob(f"v*{SUFFIX}"):
            if other != path and _version(other) is not None and _version(other) < model_version:
                other.unlink(missing_ok=True)
        return path

    def forget(self, image_id: str) -> None:
        """Drop every stored version of ``image_id`` (it was labeled)."""
        shutil.rmtree(self.folder / check_name(image_id, what="image id"), ignore_errors=True)

    def copy_out(self, image_id: str, model_version: int, *, suffix: str = SUFFIX) -> str | None:
        """A temporary copy of the stored file (the caller owns and removes it), or None on a miss.

        A hard link when the temporary folder is on the same file system, a copy otherwise; a
        file removed between the lookup and the copy (a newer version arrived) is a miss.
        """
        path = self.get(image_id, model_version)
        if path is None:
            return None
        fd, name = tempfile.mkstemp(suffix=suffix, prefix="preseg-")
        os.close(fd)
        os.unlink(name)
        try:
            try:
                os.link(path, name)
            except OSError:
                shutil.copyfile(path, name)
        except FileNotFoundError:
            return None
        return name

    def count(self, model_version: int) -> int:
        """Images with a pre-segmentation by ``model_version``."""
        if not self.folder.is_dir():
            return 0
        name = f"v{int(model_version)}{SUFFIX}"
        return sum((entry / name).is_file() for entry in self.folder.iterdir() if entry.is_dir())

    def record(self, *, hit: bool) -> None:
        """Count one segmentation request served from the store (hit) or computed (miss)."""
        with self._lock:
            if hit:
                self._hits += 1
            else:
                self._misses += 1

    def counts(self) -> CacheCounts:
        with self._lock:
            return CacheCounts(hits=self._hits, misses=self._misses)


def _version(path: Path) -> int | None:
    stem = path.name[: -len(SUFFIX)]
    return int(stem[1:]) if stem.startswith("v") and stem[1:].isdigit() else None
