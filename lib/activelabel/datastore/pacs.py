"""A DICOMweb PACS as ActiveLabel's datastore: series in, DICOM SEG labels out.

The PACS lists the images (QIDO-RS series of the configured modalities, CT and MR by
default; never SEG).  A series is fetched (WADO-RS) when first needed and kept as NIfTI in
a local cache, which is an ordinary :class:`ValidatingDatastore`: uploads are checked and
versioned exactly as for a folder.  A final label is also written as a DICOM SEG (highdicom)
and stored to the PACS (STOW-RS) before it becomes the live label; SEGs found in the PACS
(made here or elsewhere) are read back as label maps for training.

PACS failures answer 503 (down) or 502 (refused, wrong credentials) and leave nothing
half-stored; the server keeps running and the next request tries the PACS again.  The one
exception is a final label saved while the PACS is down: it is stored locally and its SEG
waits, unsent, in an outbox (:mod:`activelabel.pacs.outbox`) until the PACS answers again, so
a clinician's work is never refused because of the PACS.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pydicom
import SimpleITK as sitk
from fastapi import HTTPException
from filelock import FileLock
from pydicom.dataset import Dataset

from activelabel.config import setting
from activelabel.datastore.local import StoredLabel, ValidatingDatastore
from activelabel.labelmap import NOT_ANNOTATED, LabelMap
from activelabel.pacs.dicom_seg import SegError, SegmentOrigin, build_seg, referenced_series, seg_to_labelmap
from activelabel.pacs.dicomweb import PacsClient, PacsError, PacsUnavailable, SeriesRecord
from activelabel.pacs.geometry import GeometryMismatch, SeriesGeometry
from activelabel.pacs.outbox import SegOutbox
from activelabel.store.label_versions import (
    FINAL_TAG,
    ORIGINAL_TAG,
    LabelSource,
    LabelVersionStore,
    Provenance,
)
from activelabel.store.validation import InputRejected

logger = logging.getLogger(__name__)

SEG_MODALITY = "SEG"
DICOM_DIR = "dicom"
OUTBOX_DIR = "unsent-segs"
SEG_INFO_KEY = "seg_series_uid"


def is_dicom_file(path: str | Path) -> bool:
    """Whether ``path`` starts with the DICOM preamble (128 bytes, then ``DICM``)."""
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def segment_origin(provenance: Provenance, *, had_prediction: bool) -> SegmentOrigin:
    """A label's SEG algorithm type: the model's own output, a corrected prediction, or drawn by hand."""
    if provenance.source in (LabelSource.MODEL, LabelSource.AUTO):
        return SegmentOrigin.AUTOMATIC
    return SegmentOrigin.SEMIAUTOMATIC if had_prediction else SegmentOrigin.MANUAL


@contextlib.contextmanager
def pacs_http() -> Iterator[None]:
    """Turn a :class:`PacsError` into the HTTP answer (502/503) with its message."""
    try:
        yield
    except PacsError as error:
        logger.warning("%s", error)
        raise HTTPException(status_code=error.status, detail=str(error)) from None


class PacsDatastore(ValidatingDatastore):
    """The PACS' series as images, cached as NIfTI under ``cache_dir``; final labels as DICOM SEG.

    Args:
        client: the PACS' DICOMweb client.
        cache_dir: local folder of fetched series (NIfTI plus the DICOM files) and labels.
        labels: the app's labels.
        versions: where every label is kept, with its provenance.
        modalities: the series modalities that are images to label.
        list_seconds: how long a QIDO-RS listing is reused before the PACS is asked again.
        **kwargs: passed to :class:`ValidatingDatastore` (``readers``, ``on_saved``).
    """

    def __init__(
        self,
        client: PacsClient,
        cache_dir: Path,
        *,
        labels: LabelMap,
        versions: LabelVersionStore,
        modalities: tuple[str, ...] = ("CT", "MR"),
        list_seconds: float = 10.0,
        **kwargs: Any,
    ) -> None:
        self._client = client
        self._modalities = modalities
        self._list_seconds = list_seconds
        self._listed: tuple[float, dict[str, SeriesRecord]] | None = None
        self._seg_refs: dict[str, str] = {}  # SEG series -> referenced image series (immutable)
        self._listing_lock = threading.Lock()
        self.outbox = SegOutbox(cache_dir / OUTBOX_DIR)
        cache_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(str(cache_dir), labels=labels, versions=versions, extensions=("*.nii.gz", "*.nii"), **kwargs)

    def name(self) -> str:
        return self._client.url

    # -- listing ---------------------------------------------------------------------------

    def _series(self) -> tuple[dict[str, SeriesRecord], dict[str, list[SeriesRecord]]]:
        """Image series by UID, and SEG series by the image series they reference (newest last)."""
        with self._listing_lock:
            now = time.monotonic()
            if self._listed is None or now - self._listed[0] > self._list_seconds:
                self.outbox.send(self._client.store)  # first, so the listing has them
                records: dict[str, SeriesRecord] = {}
                for modality in (*self._modalities, SEG_MODALITY):
                    for record in self._client.search_series(Modality=modality):
                        records[record.series_uid] = record
                self._listed = (now, records)
            records = self._listed[1]
        images = {uid: r for uid, r in records.items() if r.modality in self._modalities}
        segs: dict[str, list[SeriesRecord]] = {}
        for record in sorted((r for r in records.values() if r.modality == SEG_MODALITY), key=lambda r: r.order):
            target = self._referenced_image(record)
            if target in images:
                segs.setdefault(target, []).append(record)
        return images, segs

    def _referenced_image(self, seg: SeriesRecord) -> str:
        if seg.series_uid not in self._seg_refs:
            metadata = self._client.series_metadata(seg.study_uid, seg.series_uid)
            references = referenced_series(metadata[0]) if metadata else []
            self._seg_refs[seg.series_uid] = references[0] if references else ""
        return self._seg_refs[seg.series_uid]

    def invalidate(self) -> None:
        """Forget the cached listing: the next call asks the PACS."""
        with self._listing_lock:
            self._listed = None

    def list_images(self) -> list[str]:
        with pacs_http():
            return sorted(self._series()[0])

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        with pacs_http():
            images, segs = self._series()
        local = set(super().get_labeled_images(label_tag, labels))
        return sorted((local | set(segs)) & set(images))

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        labeled = set(self.get_labeled_images(label_tag, labels))
        return [image for image in self.list_images() if image not in labeled]

    def is_unlabeled(self, image_id: str) -> bool:
        """Whether the PACS lists ``image_id`` and neither it nor the local cache holds its final label."""
        with pacs_http():
            images, segs = self._series()
        return image_id in images and image_id not in segs and not self.has_label(image_id)

    def labeled_count(self) -> int:
        return len(self.get_labeled_images())

    def status(self) -> dict[str, Any]:
        """Counts over the PACS' series, or its failure (so that ``/info/`` answers while the PACS is down)."""
        try:
            total, completed = len(self.list_images()), self.labeled_count()  # sends unsent SEGs first
        except HTTPException as error:
            failed = {"total": None, "completed": None, "label_tags": {}, "pacs_error": error.detail}
            return {**failed, "unsent_segs": self.unsent_images()}
        return {**super().status(), "total": total, "completed": completed, "unsent_segs": self.unsent_images()}

    def unsent_images(self) -> list[str]:
        """Images whose final label's SEG waits for the PACS (saved while it was down)."""
        return sorted({seg.image_id for seg in self.outbox.pending()})

    def json(self) -> dict[str, Any]:
        """The cached datastore plus every PACS series not fetched yet (``GET /datastore/?output=all``)."""
        document = super().json()
        with pacs_http():
            images = self._series()[0]
        objects = document.setdefault("objects", {})
        for uid, record in images.items():
            objects.setdefault(uid, {"image": {"ext": ".nii.gz", "info": record.info()}, "labels": {}})
        return document

    # -- images ----------------------------------------------------------------------------

    def get_image_uri(self, image_id: str) -> str:
        uri = super().get_image_uri(image_id)
        if uri and os.path.isfile(uri):
            return uri
        with pacs_http():
            record = self._series()[0].get(image_id)
            if record is None:
                return ""
            return self._fetch_image(record)

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        info = super().get_image_info(image_id)
        if info:
            return info
        with pacs_http():
            record = self._series()[0].get(image_id)
        return record.info() if record else {}

    def _series_dir(self, series_uid: str) -> Path:
        return Path(self._datastore_path) / DICOM_DIR / series_uid

    def _fetch_image(self, record: SeriesRecord) -> str:
        """Download a series (WADO-RS), keep its files and write it as NIfTI into the cache."""
        folder = self._series_dir(record.series_uid)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):
            uri = super().get_image_uri(record.series_uid)
            if uri and os.path.isfile(uri):
                return uri
            if not folder.is_dir() or not any(folder.iterdir()):
                datasets = self._client.retrieve_series(record.study_uid, record.series_uid)
                partial = folder.with_name(folder.name + ".partial")
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
                for ds in datasets:
                    ds.save_as(str(partial / f"{ds.SOPInstanceUID}.dcm"))
                shutil.rmtree(folder, ignore_errors=True)
                partial.rename(folder)
            geometry = self.series_geometry(record.series_uid)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(folder / f"{uid}.dcm") for uid in geometry.sop_uids])
            image = reader.Execute()
            with tempfile.TemporaryDirectory(dir=self._datastore_path) as work:
                path = Path(work) / f"{record.series_uid}.nii.gz"
                sitk.WriteImage(image, str(path), useCompression=True)
                super().add_image(record.series_uid, str(path), record.info())
        logger.info("fetched series %s (%s, %d slices)", record.series_uid, record.modality, geometry.size[2])
        return super().get_image_uri(record.series_uid)

    def source_headers(self, image_id: str) -> list[Dataset]:
        """The cached DICOM instances of an image series, without pixel data."""
        folder = self._series_dir(image_id)
        return [pydicom.dcmread(str(path), stop_before_pixels=True) for path in sorted(folder.glob("*.dcm"))]

    def series_geometry(self, image_id: str) -> SeriesGeometry:
        """The voxel grid of a cached image series."""
        return SeriesGeometry.from_datasets(self.source_headers(image_id))

    # -- labels ----------------------------------------------------------------------------

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        uri = super().get_label_uri(label_id, label_tag)
        if uri or label_tag != FINAL_TAG:
            return uri
        with pacs_http():
            segs = self._series()[1].get(label_id)
            if not segs:
                return ""
            self._import_seg(label_id, segs[-1])
        return super().get_label_uri(label_id, label_tag)

    def sync_labels(self) -> list[str]:
        """Read each image's newest PACS SEG unless it is the live label already; returns those images."""
        imported = []
        with pacs_http():
            _, segs = self._series()
            for image_id, records in sorted(segs.items()):
                newest = records[-1]
                if self.outbox.has(image_id):  # the live label is newer than anything in the PACS
                    continue
                live = self._datastore.objects.get(image_id)
                label = live.labels.get(FINAL_TAG) if live else None
                if label is not None and label.info.get(SEG_INFO_KEY) == newest.series_uid:
                    continue
                try:
                    self._import_seg(image_id, newest)
                except (SegError, GeometryMismatch) as error:
                    logger.warning("SEG %s of %s ignored: %s", newest.series_uid, image_id, error)
                    continue
                imported.append(image_id)
        return imported

    def _import_seg(self, image_id: str, record: SeriesRecord) -> StoredLabel:
        """Read a PACS SEG onto its image's grid and store it as the live final label (not sent back)."""
        self.get_image_uri(image_id)
        datasets = self._client.retrieve_series(record.study_uid, record.series_uid)
        if not datasets:
            raise SegError(f"the SEG series {record.series_uid} has no instances")
        geometry = self.series_geometry(image_id)
        array = seg_to_labelmap(datasets[0], geometry, self._labels)
        info = {SEG_INFO_KEY: record.series_uid}
        provenance = Provenance(source=LabelSource.IMPORTED, details={"seg_series": record.series_uid})
        with tempfile.TemporaryDirectory(dir=self._datastore_path) as work:
            path = Path(work) / f"{image_id}.nii.gz"
            sitk.WriteImage(geometry.to_image(array), str(path), useCompression=True)
            logger.info("read SEG %s as the final label of %s", record.series_uid, image_id)
            return ValidatingDatastore._store_label(self, image_id, str(path), FINAL_TAG, info, provenance=provenance)

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        """Training pairs: the PACS' SEGs are read first, images no longer in the PACS are left out."""
        self.sync_labels()
        with pacs_http():
            listed = set(self._series()[0])
        pairs = super().datalist(full_path)
        return [item for item in pairs if self._to_id(os.path.basename(item["image"]))[0] in listed]

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Check and store a label; a DICOM SEG upload is first read onto the image's grid."""
        if not is_dicom_file(label_filename):
            return super().save_label(image_id, label_filename, label_tag, label_info)
        if not self.get_image_uri(image_id):
            raise HTTPException(status_code=404, detail=f"unknown image id {image_id!r}")
        try:
            seg = pydicom.dcmread(label_filename)
            array = seg_to_labelmap(seg, self.series_geometry(image_id), self._labels)
        except (SegError, GeometryMismatch) as error:
            raise HTTPException(status_code=422, detail=f"DICOM SEG rejected: {error}") from None
        except (pydicom.errors.InvalidDicomError, AttributeError, KeyError, ValueError) as error:
            raise HTTPException(status_code=415, detail=f"the DICOM SEG cannot be read: {error}") from None
        with tempfile.TemporaryDirectory(dir=self._datastore_path) as work:
            path = Path(work) / f"{image_id}.nii.gz"
            sitk.WriteImage(self.series_geometry(image_id).to_image(array), str(path), useCompression=True)
            return super().save_label(image_id, str(path), label_tag, label_info)

    def _store_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any], *, provenance: Provenance
    ) -> StoredLabel:
        """A final label goes to the PACS as a DICOM SEG first; only then does it become the live label."""
        if label_tag == FINAL_TAG:
            if label_info.get("partial"):
                raise InputRejected(
                    f"a partial label (voxels {NOT_ANNOTATED}: not annotated) cannot be written to the PACS as a "
                    "DICOM SEG, which has no 'not annotated' segment; annotate every slice, or label partially on a "
                    "folder datastore"
                )
            record = self._store_seg(image_id, label_filename, provenance=provenance)
            label_info = {**label_info, SEG_INFO_KEY: record}
        return super()._store_label(image_id, label_filename, label_tag, label_info, provenance=provenance)

    def _store_seg(self, image_id: str, label_filename: str, *, provenance: Provenance) -> str:
        """Make the label's DICOM SEG and STOW it; returns the SEG's SeriesInstanceUID.

        Raises:
            InputRejected: 422 when the label does not lie on the series' grid (nothing is stored).
        """
        original = self._datastore.objects.get(image_id)
        prediction = original.labels.get(ORIGINAL_TAG) if original else None
        model_version = provenance.model_version
        if model_version is None and prediction is not None:
            model_version = (prediction.info.get("params") or {}).get("model_version")
        origin = segment_origin(provenance, had_prediction=prediction is not None)
        sources = [pydicom.dcmread(str(p)) for p in sorted(self._series_dir(image_id).glob("*.dcm"))]
        try:
            seg = build_seg(
                sitk.ReadImage(label_filename),
                sources,
                labels=self._labels,
                origin=origin,
                model_version=model_version if isinstance(model_version, int) else None,
            )
        except (GeometryMismatch, SegError) as error:
            raise InputRejected(f"the label cannot be stored as a DICOM SEG of its series: {error}") from None
        try:
            self.outbox.send(self._client.store)  # the older ones first: the PACS keeps the order
            self._client.store([seg])
        except PacsUnavailable as error:
            self.outbox.put(image_id, seg)
            logger.warning(
                "the PACS is unreachable (%s): the final label of %s is stored locally and its SEG %s is kept "
                "unsent until the PACS answers",
                error,
                image_id,
                seg.SeriesInstanceUID,
            )
            return str(seg.SeriesInstanceUID)
        except PacsError as error:
            logger.warning("%s", error)
            raise HTTPException(status_code=error.status, detail=str(error)) from None
        self.invalidate()
        logger.info("stored SEG %s (%s) for %s", seg.SeriesInstanceUID, origin.value, image_id)
        return str(seg.SeriesInstanceUID)


def open_pacs_datastore(
    url: str,
    *,
    conf: Mapping[str, str],
    state_dir: Path,
    labels: LabelMap,
    versions: LabelVersionStore,
    readers: int = 1,
    on_saved: Callable[[str, str, Path, dict[str, Any]], None] | None = None,
) -> PacsDatastore:
    """The PACS datastore for ``url`` with the ``pacs_*`` settings of ``conf`` (or the environment)."""
    client = PacsClient(
        url,
        user=setting("pacs_user", conf=conf),
        password=setting("pacs_password", conf=conf),
        timeout=setting("pacs_timeout", conf=conf),
    )
    return PacsDatastore(
        client,
        state_dir / "pacs-cache",
        labels=labels,
        versions=versions,
        modalities=setting("pacs_modalities", conf=conf),
        list_seconds=setting("pacs_list_seconds", conf=conf),
        readers=readers,
        on_saved=on_saved,
    )
