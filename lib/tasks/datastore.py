"""MONAI Label's local datastore with every upload checked before it is stored."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore
from monailabel.interfaces.exception import ImageNotFoundException

from activelabel.fsutil import atomic_write
from activelabel.labelmap import LabelMap
from activelabel.validation import InputRejected, check_image, check_label


def _http_error(error: InputRejected) -> HTTPException:
    return HTTPException(status_code=error.status, detail=str(error))


class ValidatingDatastore(LocalDatastore):
    """A :class:`LocalDatastore` that checks uploads and never loses a label.

    Bad uploads are rejected with HTTP 4xx and nothing is stored.  The checks raise FastAPI's
    ``HTTPException`` because MONAI Label's endpoints call the datastore directly; this way
    the stock ``monailabel start_server`` answers 4xx too.  Labels are written atomically,
    and a label that a new one replaces is kept under ``history_dir``.

    Args:
        datastore_path: the studies folder.
        labels: the app's labels; label uploads may hold only these values and 0.
        history_dir: where replaced labels are kept, as ``<tag>/<image id>/<time><ext>``.
        on_saved: called after a label is stored, with image id, tag, stored path and label info.
        **kwargs: passed to :class:`LocalDatastore`.
    """

    def __init__(
        self,
        datastore_path: str,
        *,
        labels: LabelMap,
        history_dir: str | Path,
        on_saved: Callable[[str, str, Path, dict[str, Any]], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self._labels = labels
        self._history_dir = Path(history_dir)
        self._on_saved = on_saved
        super().__init__(datastore_path, **kwargs)

    def sync(self) -> None:
        """Re-read the datastore file if another process (a task subprocess) changed it.

        Cheap when nothing changed (one stat); the file watcher does the same, but later.
        """
        self._init_from_datastore_file()

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        try:
            check_image(image_filename)
        except InputRejected as error:
            raise _http_error(error) from None
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        image_path = self.get_image_uri(image_id)
        if not image_path:
            raise HTTPException(status_code=404, detail=f"unknown image id {image_id!r}")
        try:
            check_label(label_filename, image_path, self._labels)
        except InputRejected as error:
            raise _http_error(error) from None
        return self._store_label(image_id, label_filename, label_tag, label_info)

    def _store_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """LocalDatastore.save_label with an atomic write and the replaced file kept."""
        _, label_ext = self._to_id(os.path.basename(label_filename))
        name = self._filename(image_id, label_ext)
        with FileLock(self._lock_file):
            obj = self._datastore.objects.get(image_id)
            if not obj:
                raise ImageNotFoundException(f"Image {image_id} not found")
            dest = Path(self._datastore.label_path(label_tag)) / name
            if dest.exists():
                kept = self._history_dir / label_tag / image_id / f"{time.time():.6f}{label_ext}"
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(dest, kept)
            atomic_write(dest, lambda tmp: shutil.copyfile(label_filename, tmp))
            info = dict(label_info or {})
            info["ts"] = int(time.time())
            info["name"] = name
            obj.labels[label_tag] = DataModel(info=info, ext=label_ext)
            self._update_datastore_file(lock=False)
        if self._on_saved is not None:
            self._on_saved(image_id, label_tag, dest, info)
        return image_id
