"""MONAI Label's local datastore, kept in SQLite so that no request costs time in the pool's size.

:class:`IndexedLocalDatastore` keeps LocalDatastore's in-memory model and file layout (images
in the studies folder, labels under ``labels/<tag>``) but persists entries row by row in
``datastore.sqlite`` (see :mod:`activelabel.datastore.index_db`) instead of rewriting
``datastore_v2.json`` on every change, and keeps counts and the labeled set up to date as it
goes, so that status, "is this image unlabeled?" and the count of labeled images are O(1).
An existing ``datastore_v2.json`` is imported once, the first time a folder is opened.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.exception import ImageNotFoundException

from activelabel.datastore.index_db import DatastoreDatabase, Snapshot

logger = logging.getLogger(__name__)

DATABASE_FILE = "datastore.sqlite"
_FINAL = DefaultLabelTag.FINAL.value
_ORIGINAL = DefaultLabelTag.ORIGINAL.value
_META_FIELDS = ("name", "description", "images_dir", "labels_dir")


def _entry(name: str, ext: str) -> DataModel:
    """A new image or label entry for the file ``name``, as LocalDatastore makes them."""
    return DataModel(info={"ts": int(time.time()), "name": name}, ext=ext)


class IndexedLocalDatastore(LocalDatastore):
    """A :class:`LocalDatastore` persisted in SQLite, one row per image.

    Writes go to the rows that changed only: the hot paths (a served sample's info, a
    stored label) name their image; other LocalDatastore operations (reconciling the folder
    at start, removals) compare each entry with what was last stored.  Another process's
    writes are read back incrementally by :meth:`sync`.

    With ``auto_reload`` the folder's images and label folders are watched, but not the
    folders below them (LocalDatastore watches the whole tree, so every write to the state
    kept there — databases, label versions — woke its watcher thread).

    Args:
        datastore_path: the studies folder.
        database: the index file (default ``<datastore_path>/.activelabel/datastore.sqlite``);
            kept out of the studies folder itself so that writing it wakes no file watcher.
        **kwargs: passed to :class:`LocalDatastore`.
    """

    def __init__(self, datastore_path: str, *, database: str | Path | None = None, **kwargs: Any) -> None:
        default = Path(datastore_path) / ".activelabel" / DATABASE_FILE
        self._database = DatastoreDatabase(database if database is not None else default)
        self._seq = -1  # nothing loaded yet
        self._stored: dict[str, str] = {}  # image id -> body as last written or read
        self._tags: dict[str, frozenset[str]] = {}
        self._tag_counts: Counter[str] = Counter()
        self._dirty: set[str] | None = None
        super().__init__(datastore_path, **kwargs)
        self._watch_folders_only()

    def _watch_folders_only(self) -> None:
        """Watch the image folder and each label folder themselves, not the tree below them."""
        observer = getattr(self, "_observer", None)
        if observer is None:
            return
        observer.unschedule_all()
        folders = {self._datastore.image_path(), self._datastore.label_path(None)}
        folders.update(self._datastore.label_path(tag) for tag in (*self._datastore.tags(), _FINAL, _ORIGINAL))
        for folder in sorted(folders):
            if os.path.isdir(folder):
                observer.schedule(self._handler, path=folder, recursive=False)

    # -- bookkeeping ----------------------------------------------------------------------

    def _index(self, image_id: str, body: str | None) -> None:
        """Record ``body`` as the stored state of ``image_id`` and update the counts."""
        for tag in self._tags.pop(image_id, frozenset()):
            self._tag_counts[tag] -= 1
        if body is None:
            self._stored.pop(image_id, None)
            return
        self._stored[image_id] = body
        obj = self._datastore.objects.get(image_id)
        tags = frozenset(tag for tag, label in obj.labels.items() if label) if obj else frozenset()
        self._tags[image_id] = tags
        self._tag_counts.update(tags)

    def _apply(self, snapshot: Snapshot) -> None:
        """Bring the in-memory model up to ``snapshot`` (rows another process wrote)."""
        objects = self._datastore.objects
        for image_id, body in snapshot.entries.items():
            if body is None:
                objects.pop(image_id, None)
            elif self._stored.get(image_id) != body:
                objects[image_id] = ImageLabelModel.model_validate_json(body)
            self._index(image_id, body)
        for field in _META_FIELDS:
            if field in snapshot.meta:
                setattr(self._datastore, field, snapshot.meta[field])
        self._seq = max(self._seq, snapshot.seq)

    def _meta(self) -> dict[str, str]:
        return {field: str(getattr(self._datastore, field)) for field in _META_FIELDS}

    def _write(self, image_ids: Iterable[str]) -> None:
        """Store the current entries of ``image_ids`` (absent ones as removed)."""
        objects = self._datastore.objects
        entries = {}
        for image_id in image_ids:
            obj = objects.get(image_id)
            entries[image_id] = obj.model_dump_json() if obj is not None else None
        if not entries:
            return
        seq = self._database.write(entries, meta=self._meta())
        for image_id, body in entries.items():
            self._index(image_id, body)
        if seq == self._seq + 1:  # nobody else wrote since the last look: no need to read this back
            self._seq = seq

    def _changed_ids(self) -> set[str]:
        """Entries whose in-memory state differs from what was last stored (a full comparison)."""
        objects = self._datastore.objects
        changed = {image_id for image_id in self._stored if image_id not in objects}
        changed.update(
            image_id for image_id, obj in objects.items() if self._stored.get(image_id) != obj.model_dump_json()
        )
        return changed

    def _import(self) -> None:
        """First open of a folder: take ``datastore_v2.json`` (if any) into the database."""
        if os.path.exists(self._datastore_config_path):
            with open(self._datastore_config_path) as handle:
                self._datastore = LocalDatastoreModel.model_validate_json(handle.read())
            self._datastore.base_path = self._datastore_path
            logger.info("imported %d entries from %s", len(self._datastore.objects), self._datastore_config_path)
        self._write(self._datastore.objects)
        if not self._datastore.objects:
            self._database.write({}, meta=self._meta())

    # -- LocalDatastore persistence hooks ---------------------------------------------------

    def _init_from_datastore_file(self, throw_exception: bool = False) -> None:
        """Load everything on first call; afterwards read only rows written since (O(changes))."""
        if self._seq >= 0:
            self._apply(self._database.changes(self._seq))
            return
        if self._database.is_empty():
            self._import()
        self._datastore.objects = {}
        self._stored, self._tags, self._tag_counts = {}, {}, Counter()
        self._apply(self._database.load())

    def _update_datastore_file(self, lock: bool = True) -> None:
        """Write the entries that changed: those named by the caller, else all that differ."""
        ids = self._dirty if self._dirty is not None else self._changed_ids()
        self._dirty = None
        if lock:
            with FileLock(self._lock_file):
                self._write(ids)
        else:
            self._write(ids)

    def _reconcile_datastore(self) -> None:
        """Match the entries with the files in the folder (at start and on refresh), in O(files).

        Entries whose image file is gone are dropped, as are labels whose file is gone; image
        files without an entry are added, and label files of known images become their labels.
        (LocalDatastore's own version checks membership in lists, which is quadratic.)
        """
        self.sync()
        objects = self._datastore.objects
        images = self._list_files(self._datastore.image_path(), self._extensions)
        present = {self._to_id(name): name for name in images}
        for image_id in [i for i, obj in objects.items() if self._filename(i, obj.image.ext) not in images]:
            logger.info("removing image %s: its file is gone", image_id)
            del objects[image_id]
        for (image_id, ext), name in present.items():
            if image_id not in objects:
                objects[image_id] = ImageLabelModel(image=_entry(name, ext))
        labels_dir = self._datastore.label_path(None)
        tags = sorted(f for f in os.listdir(labels_dir) if os.path.isdir(os.path.join(labels_dir, f)))
        for tag in tags:
            files = self._list_files(self._datastore.label_path(tag), self._extensions)
            for obj_id, obj in objects.items():
                label = obj.labels.get(tag)
                if label is not None and self._filename(obj_id, label.ext) not in files:
                    logger.info("removing label %s of %s: its file is gone", tag, obj_id)
                    del obj.labels[tag]
            for name in files:
                image_id, ext = self._to_id(name)
                obj = objects.get(image_id)
                if obj is not None and not obj.labels.get(tag):
                    obj.labels[tag] = _entry(name, ext)
        self._update_datastore_file()

    def _write_one(self, image_id: str, method: Any, *args: Any) -> Any:
        """Run a LocalDatastore mutator that changes only ``image_id``, writing just that row."""
        self._dirty = {image_id}
        try:
            return method(*args)
        finally:
            self._dirty = None

    # -- cheap mutators and queries ---------------------------------------------------------

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        image_id = image_id or self._to_id(os.path.basename(image_filename))[0]
        return self._write_one(image_id, super().add_image, image_id, image_filename, image_info)

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """Merge ``info`` into one image's info and store just that row."""
        with FileLock(self._lock_file):
            self.sync()
            obj = self._datastore.objects.get(image_id)
            if not obj:
                raise ImageNotFoundException(f"Image {image_id} not found")
            obj.image.info.update(info)
            self._write([image_id])

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        self._write_one(label_id, super().update_label_info, label_id, label_tag, info)

    def sync(self) -> None:
        """Read what other processes (task subprocesses) wrote since the last look."""
        self._init_from_datastore_file()

    def is_unlabeled(self, image_id: str) -> bool:
        """Whether ``image_id`` is in the datastore without a final label (O(1))."""
        obj = self._datastore.objects.get(image_id)
        return obj is not None and not obj.labels.get(_FINAL)

    def has_label(self, image_id: str, tag: str = _FINAL) -> bool:
        """Whether ``image_id`` has a live label under ``tag``."""
        obj = self._datastore.objects.get(image_id)
        return bool(obj and obj.labels.get(tag))

    def labeled_count(self) -> int:
        """Images with a final label, as last stored (O(1))."""
        return self._tag_counts[_FINAL]

    def status(self) -> dict[str, Any]:
        """LocalDatastore's counts, from the maintained index instead of a pass over all images."""
        return {
            "total": len(self._datastore.objects),
            "completed": self.labeled_count(),
            "label_tags": {tag: count for tag, count in sorted(self._tag_counts.items()) if count},
        }
