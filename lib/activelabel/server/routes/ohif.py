"""What the bundled OHIF v3 viewer's MONAI Label mode needs from the server, and does not get from MONAI Label.

Three gaps between MONAI Label 0.8.5's bundled viewer and ``activelabel serve``:

* ``/info/``: the panel reads the app's ``labels`` as a list (``labels.push``); the app
  declares them as a name -> value object, which stopped the panel right after connecting.
  The answer lists the names ordered by value (each model still carries its name -> value map).
* The MONAI Label mode has no way to submit a label: its panel never calls ``/datastore/label``
  and the mode shows no segmentation panel.  Two bundles are served patched (see
  :data:`BUNDLE_PATCHES`): the mode shows OHIF's own segmentation panel next to the MONAI Label
  panel, and that panel's "Export DICOM SEG" reaches the data source (STOW-RS through the
  server's DICOMweb proxy).
* That STOW-RS of a DICOM SEG is taken here instead of being passed to the PACS: each SEG of
  a series the datastore lists is stored as the series' final label, exactly as an upload to
  ``PUT /datastore/label`` (checked, versioned with the signed-in user as author, written to
  the PACS as the server's own SEG).  Other instances go on to the PACS (admins only).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from email.parser import BytesParser
from email.policy import HTTP
from functools import lru_cache
from pathlib import Path
from typing import Any

import pydicom
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from monailabel.endpoints import ohif as monailabel_ohif
from monailabel.endpoints.proxy import proxy_dicom
from monailabel.interfaces.utils.app import app_instance
from pydicom.dataset import Dataset

from activelabel.access.policy import Role
from activelabel.access.request_user import authenticated_user
from activelabel.pacs.dicom_seg import SEG_SOP_CLASS, referenced_series
from activelabel.server.offload import find_route, like, replace_endpoint
from activelabel.store.label_versions import FINAL_TAG
from activelabel.store.validation import InputRejected

logger = logging.getLogger(__name__)

OHIF_DIR = Path(monailabel_ohif.__file__).resolve().parent / "static" / "ohif"
BUNDLE_PATCHES: tuple[tuple[bytes, bytes, bytes], ...] = (
    # The MONAI Label mode: OHIF's segmentation panel (without its tool box, whose brush buttons
    # the mode does not define) next to the MONAI Label panel, for "Export DICOM SEG".
    (
        b"modes/monai-label/src/index.tsx",
        b"rightPanels: [monailabel.monaiLabel]",
        b"rightPanels: [monailabel.monaiLabel, '@ohif/extension-cornerstone.panelModule.panelSegmentation']",
    ),
    # The SEG extension's store command: the segmentation panel calls it without a data source.
    (
        b"extensions/cornerstone-dicom-seg/src/commandsModule",
        b"storeSegmentation: async ({\n      segmentationId,\n      dataSource\n    }) => {\n",
        b"storeSegmentation: async ({\n      segmentationId,\n      dataSource\n    }) => {\n"
        b"      dataSource = dataSource || extensionManager.getActiveDataSource()[0];\n",
    ),
)
"""(a marker that names the bundle, the text to replace, its replacement) for each patched bundle."""
STOW_PATHS = ("/proxy/dicom/wado/studies", "/proxy/dicom/stow/studies")
"""Where the viewer's data source sends STOW-RS (its ``wadoRoot``; ``stow`` for other configurations)."""
_MAX_BUNDLE_BYTES = 256 * 1024


def ohif_labels(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` with a name -> value ``labels`` object turned into the names ordered by value."""
    labels = info.get("labels")
    if isinstance(labels, dict):
        return {**info, "labels": [name for name, _ in sorted(labels.items(), key=lambda item: item[1])]}
    return info


@lru_cache(maxsize=1)
def patched_bundles(ohif_dir: Path = OHIF_DIR) -> dict[str, bytes]:
    """The viewer's bundles that :data:`BUNDLE_PATCHES` change, by file name, patched."""
    patched: dict[str, bytes] = {}
    for path in sorted(ohif_dir.glob("*.bundle.*.js")):
        if path.stat().st_size > _MAX_BUNDLE_BYTES:
            continue
        content = path.read_bytes()
        for marker, old, new in BUNDLE_PATCHES:
            if marker in content and old in content:
                content = content.replace(old, new, 1)
                patched[path.name] = content
    return patched


def _ohif_file(original: Callable[..., Any]) -> Callable[..., Any]:
    """MONAI Label's ``/ohif/{path}`` endpoint, answering the mode's bundle with its patched copy."""

    def serve(**values: Any) -> Any:
        patched = patched_bundles().get(values.get("path", "").rstrip("/"))
        if patched is not None:
            return Response(patched, media_type="application/javascript")
        result = original(**values)
        return asyncio.run(result) if inspect.iscoroutine(result) else result

    return like(original, serve)


def _info(original: Callable[..., Any]) -> Callable[..., Any]:
    def info(**values: Any) -> Any:
        result = original(**values)
        result = asyncio.run(result) if inspect.iscoroutine(result) else result
        return ohif_labels(result) if isinstance(result, dict) else result

    return like(original, info)


# -- STOW-RS -----------------------------------------------------------------------------------


def multipart_related_parts(content_type: str, body: bytes) -> list[bytes]:
    """The payloads of a ``multipart/related`` body (STOW-RS), in order.

    Raises:
        InputRejected: 415 for another content type, 400 for a body without parts.
    """
    if not content_type.lower().startswith("multipart/related"):
        raise InputRejected(f"STOW-RS takes multipart/related, not {content_type or 'no content type'!r}", status=415)
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    if not message.is_multipart():
        raise InputRejected("the multipart/related body has no parts (wrong boundary?)", status=400)
    parts = [part.get_payload(decode=True) or b"" for part in message.iter_parts()]
    if not parts:
        raise InputRejected("the multipart/related body has no parts", status=400)
    return parts


def _dataset(payload: bytes) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(payload), force=True, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, ValueError, EOFError) as error:
        raise InputRejected(f"a STOW-RS part is not a DICOM instance: {error}", status=400) from None


def _seg_target(dataset: Dataset, images: set[str]) -> str | None:
    """The listed image series a SEG labels; ``None`` for any other instance."""
    if str(getattr(dataset, "SOPClassUID", "")) != SEG_SOP_CLASS:
        return None
    return next((uid for uid in referenced_series(dataset) if uid in images), None)


@contextlib.contextmanager
def _temporary_file(payload: bytes, suffix: str) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(suffix=suffix)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        yield path
    finally:
        path.unlink(missing_ok=True)


def _stored_reference(dataset: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = str(getattr(dataset, "SOPClassUID", ""))
    item.ReferencedSOPInstanceUID = str(getattr(dataset, "SOPInstanceUID", ""))
    return item


def store_segs(parts: list[bytes]) -> list[dict[str, Any]] | None:
    """Store each SEG part as its series' final label; ``None`` when a part is not such a SEG.

    Raises:
        HTTPException: what the datastore answers for a label it refuses (422, 415, 502, 503).
    """
    instance = app_instance()
    datastore = instance.datastore()
    images = set(datastore.list_images())
    datasets = [_dataset(payload) for payload in parts]
    targets = [_seg_target(dataset, images) for dataset in datasets]
    if not all(targets):
        return None
    stored = []
    for payload, dataset, image in zip(parts, datasets, targets, strict=True):
        assert image is not None
        with _temporary_file(payload, ".dcm") as path:
            label_id = datastore.save_label(image, str(path), FINAL_TAG, {})
        result = instance.on_save_label(image, label_id) or {}
        logger.info("OHIF SEG %s stored as the final label of %s", dataset.SOPInstanceUID, image)
        stored.append({**result, "image": image, "label": label_id, "sop_instance_uid": str(dataset.SOPInstanceUID)})
    return stored


async def stow(request: Request) -> Response:
    """STOW-RS from the viewer: DICOM SEGs of listed series become their final labels, the rest goes to the PACS."""
    body = await request.body()
    try:
        parts = multipart_related_parts(request.headers.get("content-type", ""), body)
        stored = await asyncio.to_thread(store_segs, parts)
    except InputRejected as error:
        return JSONResponse({"detail": str(error)}, status_code=error.status)
    if stored is None:
        user = authenticated_user()
        if user is not None and user.role is not Role.ADMIN:
            detail = (
                f"user {user.name!r} ({user.role.value}) may store only DICOM SEGs of the server's series here; "
                "storing other instances in the PACS needs the admin role"
            )
            return JSONResponse({"detail": detail}, status_code=403)
        op = "stow" if request.url.path.startswith("/proxy/dicom/stow/") else "wado"
        return await proxy_dicom(request, op, request.url.path.split(f"/proxy/dicom/{op}/", 1)[1])
    references = Dataset()
    references.ReferencedSOPSequence = [_stored_reference(_dataset(payload)) for payload in parts]
    return JSONResponse(
        {**references.to_json_dict(), "activelabel": stored}, media_type="application/dicom+json", status_code=200
    )


def install_ohif_routes(app: FastAPI) -> None:
    """The ``/info/`` labels list, the patched mode bundle and the STOW-RS route (before MONAI Label's proxy)."""
    info = find_route(app, "/info/", "GET")
    replace_endpoint(app, info, _info(info.endpoint))
    files = find_route(app, "/ohif/{path:path}", "GET")
    replace_endpoint(app, files, _ohif_file(files.endpoint))
    if len(patched_bundles()) < len(BUNDLE_PATCHES):
        logger.warning("the OHIF bundles to patch were not all found: the viewer may offer no label export")
    routes = [
        APIRoute(f"{prefix}{suffix}", stow, methods=["POST"], include_in_schema=False)
        for prefix in STOW_PATHS
        for suffix in ("", "/{study}")
    ]
    app.router.routes[0:0] = routes


__all__ = ["install_ohif_routes", "multipart_related_parts", "ohif_labels", "patched_bundles"]
