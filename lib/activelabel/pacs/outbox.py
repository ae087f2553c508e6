"""DICOM SEGs made while the PACS was unreachable, kept on disk until they are sent.

A final label whose SEG could not be stored (STOW-RS) because the PACS was down is still
saved locally; its SEG waits here as ``<folder>/<image id>/<SEG series UID>.dcm``, written
atomically, and is sent (oldest first) the next time the PACS answers.  A file here means
"unsent": there is no other flag to keep in step.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from activelabel.pacs.dicomweb import PacsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnsentSeg:
    """One SEG waiting for the PACS."""

    image_id: str
    series_uid: str
    path: Path


class SegOutbox:
    """The unsent SEGs under ``folder``; safe to share between threads of one process."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._sending = threading.Lock()

    def put(self, image_id: str, seg: Dataset) -> UnsentSeg:
        """Keep ``seg`` (a DICOM SEG of image ``image_id``) until it is sent."""
        target = self.folder / image_id / f"{seg.SeriesInstanceUID}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".partial")
        os.close(handle)
        try:
            seg.save_as(temporary)
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        return UnsentSeg(image_id=image_id, series_uid=str(seg.SeriesInstanceUID), path=target)

    def pending(self) -> list[UnsentSeg]:
        """Every unsent SEG, oldest first."""
        if not self.folder.is_dir():
            return []
        files = [path for path in self.folder.glob("*/*.dcm") if not path.name.startswith(".")]
        files.sort(key=lambda path: path.stat().st_mtime)
        return [UnsentSeg(image_id=path.parent.name, series_uid=path.stem, path=path) for path in files]

    def has(self, image_id: str) -> bool:
        """Whether a SEG of ``image_id`` still waits."""
        return any((self.folder / image_id).glob("*.dcm"))

    def send(self, store: Callable[[Sequence[Dataset]], None]) -> list[UnsentSeg]:
        """Send the waiting SEGs with ``store`` (STOW-RS), oldest first; the ones sent.

        Stops at the first failure, keeping that SEG and the later ones for the next try.
        """
        with self._sending:
            return self._send(store)

    def _send(self, store: Callable[[Sequence[Dataset]], None]) -> list[UnsentSeg]:
        sent: list[UnsentSeg] = []
        for unsent in self.pending():
            try:
                store([pydicom.dcmread(str(unsent.path))])
            except PacsError as error:
                logger.warning("%d unsent SEG(s) wait for the PACS: %s", len(self.pending()) - len(sent), error)
                break
            unsent.path.unlink()
            with_rest = unsent.path.parent
            if not any(with_rest.iterdir()):
                with_rest.rmdir()
            logger.info("sent SEG %s of %s, kept while the PACS was unreachable", unsent.series_uid, unsent.image_id)
            sent.append(unsent)
        return sent
