"""MONAI Label's local datastore with every upload checked and every label kept as a version."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel
from monailabel.interfaces.exception import ImageNotFoundException

from activelabel.access.request_user import authenticated_user
from activelabel.datastore.indexed import IndexedLocalDatastore
from activelabel.fsutil import atomic_write
from activelabel.labelmap import LabelMap
from activelabel.ml.consensus import staple_files
from activelabel.store.identifiers import check_name
from activelabel.store.label_versions import (
    FINAL_TAG,
    LabelSource,
    LabelVersion,
    LabelVersionStore,
    Provenance,
    source_of_upload,
)
from activelabel.store.validation import InputRejected, LabelCoverage, check_file_type, check_image, check_label


def _http_error(error: InputRejected) -> HTTPException:
    return HTTPException(status_code=error.status, detail=str(error))


@dataclass(frozen=True)
class StoredLabel:
    """A label that became a datastore's live label: its file, datastore info and version."""

    path: Path
    info: dict[str, Any]
    version: LabelVersion


def upload_provenance(tag: str, info: dict[str, Any]) -> Provenance:
    """Who made an uploaded label, from its tag and the params the client sent.

    Raises:
        InputRejected: 422 when ``seconds_spent`` is not a non-negative number.
    """
    source = source_of_upload(tag)
    seconds = info.get("seconds_spent")
    if seconds is not None:
        try:
            seconds = float(seconds)
        except (TypeError, ValueError):
            raise InputRejected(f"seconds_spent must be a number of seconds, got {seconds!r}") from None
        if not seconds >= 0.0:
            raise InputRejected(f"seconds_spent must be >= 0, got {seconds}")
    if source is LabelSource.HUMAN:
        author = info.get("client_id") or info.get("user")
        partial = (
            {key: info[key] for key in ("partial", "slice_axis", "annotated_slices")} if info.get("partial") else None
        )
        return Provenance(source=source, author=str(author) if author else None, seconds_spent=seconds, details=partial)
    params = info.get("params") if isinstance(info.get("params"), dict) else {}
    model_version = params.get("model_version")
    # An auto-label's triage (predicted quality, threshold, decision) stays with its version.
    triage = {key: params[key] for key in ("quality", "triage", "quality_threshold") if key in params}
    return Provenance(
        source=source,
        model_version=int(model_version) if isinstance(model_version, int) else None,
        details=triage or None,
    )


class ValidatingDatastore(IndexedLocalDatastore):
    """A folder datastore (kept in SQLite, see :class:`IndexedLocalDatastore`) that never loses a label.

    Bad uploads are rejected with HTTP 4xx and nothing is stored.  The checks raise FastAPI's
    ``HTTPException`` because MONAI Label's endpoints call the datastore directly; this way
    the stock ``monailabel start_server`` answers 4xx too.  Every stored label is first kept
    as a version in ``versions`` (with its source and author), then written atomically over
    the live label.

    With ``readers`` > 1 a volume needs that many distinct readers: each reader's ``final``
    upload is kept as a version only, and once enough readers submitted, their STAPLE
    consensus becomes the live final label (source ``consensus``).  Final labels of a volume
    that has one already replace it directly (corrections).

    Args:
        datastore_path: the studies folder.
        labels: the app's labels; label uploads may hold only these values and 0.
        versions: where every label is kept, with its provenance.
        readers: distinct readers whose final labels a volume needs.
        on_saved: called after an upload is stored, with image id, tag, stored path and label info.
        **kwargs: passed to :class:`IndexedLocalDatastore`.
    """

    def __init__(
        self,
        datastore_path: str,
        *,
        labels: LabelMap,
        versions: LabelVersionStore,
        readers: int = 1,
        on_saved: Callable[[str, str, Path, dict[str, Any]], None] | None = None,
        **kwargs: Any,
    ) -> None:
        if readers < 1:
            raise ValueError(f"readers must be >= 1, got {readers}")
        self._labels = labels
        self._versions = versions
        self._readers = readers
        self._consensus_lock = str(versions.root.parent / f".{versions.root.name}.consensus.lock")
        self._on_saved = on_saved
        super().__init__(datastore_path, **kwargs)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        try:
            check_name(image_id, what="image id")
            check_file_type(image_filename, what="uploaded file")
            check_image(image_filename)
        except InputRejected as error:
            raise _http_error(error) from None
        return super().add_image(image_id, image_filename, image_info)

    def check_label_upload(self, image_id: str, label_filename: str, label_tag: str) -> LabelCoverage:
        """The checks every label passes before it is stored; returns which slices it annotates.

        Raises:
            InputRejected: 400 for a bad id or tag, 404 for an unknown image, 415/422 for a bad file.
        """
        check_name(image_id, what="image id")
        check_name(label_tag, what="label tag")
        image_path = self.get_image_uri(image_id)
        if not image_path:
            raise InputRejected(f"unknown image id {image_id!r}", status=404)
        check_file_type(label_filename, what="label")
        return check_label(label_filename, image_path, self._labels)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Check and store a label; with access control on, its author is the authenticated user.

        The label's info records which axial slices it annotates (``partial``, ``slice_axis``,
        ``slices``, ``annotated_slices``), so partial labels are counted and never re-asked.
        """
        try:
            coverage = self.check_label_upload(image_id, label_filename, label_tag)
        except InputRejected as error:
            raise _http_error(error) from None
        label_info = {**(label_info or {}), **coverage.to_info()}
        user = authenticated_user()
        if user is not None:
            label_info = {**label_info, "client_id": user.name, "user": user.name}
        try:
            return self._save_upload(image_id, label_filename, label_tag, dict(label_info or {}))
        except InputRejected as error:
            raise _http_error(error) from None

    def store_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any], *, provenance: Provenance
    ) -> LabelVersion:
        """Check and store a label the server's own logic made or accepted (audits), with its provenance.

        Raises:
            InputRejected: when the label fails the upload checks; nothing is stored.
        """
        coverage = self.check_label_upload(image_id, label_filename, label_tag)
        label_info = {**label_info, **coverage.to_info()}
        return self._store_label(image_id, label_filename, label_tag, label_info, provenance=provenance).version

    def complete_consensus(self) -> list[str]:
        """Store the consensus of every volume that has enough readers but no final label yet.

        A crash between a reader's upload and the consensus leaves such volumes; this finishes
        them (the server calls it at start).  Returns their image ids.
        """
        if self._readers == 1:
            return []
        done = []
        with FileLock(self._consensus_lock):
            self.sync()
            for image_id, count in sorted(self._versions.reader_counts().items()):
                if count >= self._readers and image_id in self._datastore.objects and not self.has_label(image_id):
                    self._store_consensus(image_id, self._versions.readings(image_id))
                    done.append(image_id)
        return done

    def _save_upload(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Store a checked upload; with several readers, a first final label waits for the others."""
        provenance = upload_provenance(label_tag, label_info)
        if label_tag != FINAL_TAG or self._readers == 1:
            stored = self._store_label(image_id, label_filename, label_tag, label_info, provenance=provenance)
            self._notify(image_id, label_tag, stored)
            return image_id
        if provenance.author is None:
            raise InputRejected(
                f"each volume needs {self._readers} distinct readers: send your client_id with the label"
            )
        with FileLock(self._consensus_lock):
            self.sync()
            if self.has_label(image_id):  # the readers are complete: this corrects the final label
                stored = self._store_label(image_id, label_filename, label_tag, label_info, provenance=provenance)
            else:
                stored = self._add_reading(image_id, label_filename, label_info, provenance=provenance)
        self._notify(image_id, label_tag, stored)
        return image_id

    def _add_reading(
        self, image_id: str, label_filename: str, label_info: dict[str, Any], *, provenance: Provenance
    ) -> StoredLabel:
        """Keep one reader's final label as a version; store the consensus once enough readers read."""
        _, label_ext = self._to_id(os.path.basename(label_filename))
        version = self._versions.add(image_id, label_filename, tag=FINAL_TAG, ext=label_ext, provenance=provenance)
        readings = self._versions.readings(image_id)
        consensus = self._store_consensus(image_id, readings) if len(readings) >= self._readers else None
        info = {
            **label_info,
            "version": version.version,
            "source": provenance.source.value,
            "readers": {
                "required": self._readers,
                "read_by": sorted(readings),
                "consensus_version": consensus.version if consensus else None,
            },
        }
        return StoredLabel(self._versions.path(version), info, version)

    def _store_consensus(self, image_id: str, readings: dict[str, LabelVersion]) -> LabelVersion:
        """STAPLE of each reader's latest label, stored as the live final label (source consensus)."""
        inputs = sorted(readings.values(), key=lambda v: v.version)
        ext = Path(inputs[0].file).name.removeprefix(f"v{inputs[0].version}") or ".nii.gz"
        work = self._versions.root / image_id
        work.mkdir(parents=True, exist_ok=True)
        output = work / f".consensus-{os.getpid()}{ext}"
        try:
            result = staple_files([self._versions.path(v) for v in inputs], output, self._labels.to_dict())
            provenance = Provenance(
                source=LabelSource.CONSENSUS,
                details={
                    "readers": [v.author for v in inputs],
                    "inputs": [v.version for v in inputs],
                    "dice": result.dice,
                    "mean_dice": result.mean_dice,
                },
            )
            info = {"readers": [v.author for v in inputs]}
            return self._store_label(image_id, str(output), FINAL_TAG, info, provenance=provenance).version
        finally:
            output.unlink(missing_ok=True)

    def _notify(self, image_id: str, tag: str, stored: StoredLabel) -> None:
        if self._on_saved is not None:
            self._on_saved(image_id, tag, stored.path, stored.info)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        try:
            check_name(label_id, what="label id")
            check_name(label_tag, what="label tag")
        except InputRejected as error:
            raise _http_error(error) from None
        super().remove_label(label_id, label_tag)

    def _store_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any], *, provenance: Provenance
    ) -> StoredLabel:
        """LocalDatastore.save_label, versioned: the new version is on disk before the live label changes.

        A live label the version store does not hold yet (one shipped with the studies) is kept
        as an ``imported`` version first; then the live file is replaced atomically.
        """
        _, label_ext = self._to_id(os.path.basename(label_filename))
        name = self._filename(image_id, label_ext)
        with FileLock(self._lock_file):
            self.sync()
            obj = self._datastore.objects.get(image_id)
            if not obj:
                raise ImageNotFoundException(f"Image {image_id} not found")
            folder = Path(self._datastore.label_path(label_tag))
            dest = folder / name
            previous = obj.labels.get(label_tag)
            live = {dest, folder / self._filename(image_id, previous.ext)} if previous else {dest}
            for path in sorted(p for p in live if p.is_file()):
                self._versions.keep_unrecorded(image_id, path, tag=label_tag, ext=path.name[len(image_id) :])
            version = self._versions.add(image_id, label_filename, tag=label_tag, ext=label_ext, provenance=provenance)
            atomic_write(dest, lambda tmp: shutil.copyfile(self._versions.path(version), tmp))
            info = dict(label_info or {})
            info["ts"] = int(time.time())
            info["name"] = name
            info["version"] = version.version
            info["source"] = provenance.source.value
            obj.labels[label_tag] = DataModel(info=info, ext=label_ext)
            self._write([image_id])
        return StoredLabel(dest, info, version)
