"""``/activelabel/labels/...`` and ``/activelabel/audit``: label versions, consensus and audit verdicts.

Thin HTTP over :mod:`activelabel.store.label_versions` and :mod:`activelabel.store.audit`; every check
answers 4xx with one readable ``detail``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse

from activelabel.access.request_user import caller_name
from activelabel.server.served_app import activelabel_app
from activelabel.store.audit import Verdict, apply_verdict
from activelabel.store.label_versions import LabelSource, LabelVersion, file_sha256
from activelabel.store.validation import InputRejected

router = APIRouter(prefix="/activelabel", tags=["ActiveLabel"])

_REQUIRED = ("label_versions", "audits", "after_audit")


def _app() -> Any:
    instance = activelabel_app()
    if not all(hasattr(instance, name) for name in _REQUIRED):
        raise HTTPException(status_code=501, detail="the served app does not keep label versions")
    return instance


def _known_image(instance: Any, image: str) -> None:
    if image not in set(instance.datastore().list_images()):
        raise HTTPException(status_code=404, detail=f"unknown image id {image!r}")


def _current_versions(instance: Any, image: str, versions: list[LabelVersion]) -> set[int]:
    """Numbers of the versions that are the live label of their tag now (matched by SHA-256)."""
    current = set()
    for tag in {v.tag for v in versions}:
        live = instance.datastore().get_label_uri(image, tag)
        if not live or not os.path.isfile(live):
            continue
        digest = file_sha256(live)
        matching = [v.version for v in versions if v.tag == tag and v.sha256 == digest]
        if matching:
            current.add(max(matching))
    return current


@router.get("/labels/{image}/versions", summary="Every stored label of a volume, oldest first")
def label_versions(image: str) -> list[dict[str, Any]]:
    """Version number, tag, source, author, reviewer, time, time spent, model version, SHA-256.

    ``current`` marks the version that is its tag's live label (the ``final`` one is what
    training reads).
    """
    instance = _app()
    _known_image(instance, image)
    versions = instance.label_versions.versions(image)
    current = _current_versions(instance, image, versions)
    return [{**v.to_dict(), "current": v.version in current} for v in versions]


@router.get(
    "/labels/{image}/versions/{version}",
    summary="One stored label of a volume (the label file)",
    response_class=FileResponse,
)
def label_version_file(image: str, version: int) -> FileResponse:
    instance = _app()
    _known_image(instance, image)
    found = instance.label_versions.get(image, version)
    if found is None:
        count = len(instance.label_versions.versions(image))
        held = f"it has versions 1 to {count}" if count else "it has none"
        raise HTTPException(status_code=404, detail=f"{image!r} has no label version {version} ({held})")
    path = instance.label_versions.path(found)
    name = Path(found.file).name
    media = "application/gzip" if name.endswith(".gz") else "application/octet-stream"
    return FileResponse(path, media_type=media, filename=f"{image}_{name}")


@router.get("/labels/{image}/consensus", summary="The readers' consensus of a volume and their agreement")
def label_consensus(image: str) -> dict[str, Any]:
    """The latest consensus version: its readers, the versions combined and inter-reader Dice per label."""
    instance = _app()
    _known_image(instance, image)
    found = instance.label_versions.latest(image, tag="final", source=LabelSource.CONSENSUS)
    if found is None:
        readers = sorted(instance.label_versions.readings(image))
        raise HTTPException(
            status_code=404,
            detail=f"{image!r} has no consensus yet ({len(readers)} of {instance.settings.readers} readers read it)",
        )
    return {"image": image, "version": found.version, "created_at": found.created_at, **(found.details or {})}


@contextlib.contextmanager
def _saved_upload(upload: UploadFile | None) -> Iterator[Path | None]:
    """The uploaded file in a temporary file with the upload's suffixes, removed afterwards."""
    if upload is None:
        yield None
        return
    name = Path(upload.filename or "label.nii.gz").name
    suffix = "".join(Path(name).suffixes[-2:]) or ".nii.gz"
    fd, temp = tempfile.mkstemp(suffix=suffix)
    path = Path(temp)
    try:
        with os.fdopen(fd, "wb") as handle:
            shutil.copyfileobj(upload.file, handle)
        yield path
    finally:
        path.unlink(missing_ok=True)


@router.post("/audit", summary="A reviewer's verdict on an auto label: accept, reject or correct")
def audit(
    image: str,
    verdict: str,
    client_id: str = "anonymous",
    seconds_spent: float | None = Query(None, ge=0, description="time the review took"),
    label: Annotated[UploadFile | None, File(description="the corrected label (verdict correct only)")] = None,
) -> dict[str, Any]:
    """Accept: the auto label becomes the final label (source model).  Reject: the volume goes
    back to the pool.  Correct: the uploaded label becomes the final label (source human).

    The reviewer's lease on the volume ends; a new final label may start training.
    """
    instance = _app()
    reviewer = caller_name(client_id)
    try:
        choice = Verdict.parse(verdict)
        with _saved_upload(label) as corrected:
            record = apply_verdict(
                instance.datastore(),
                instance.audits,
                image_id=image,
                verdict=choice,
                reviewer=reviewer,
                labels=instance.settings.labels,
                corrected=corrected,
                seconds_spent=seconds_spent,
            )
    except InputRejected as error:
        raise HTTPException(status_code=error.status, detail=str(error)) from None
    instance.after_audit(image)
    return record.to_dict()
