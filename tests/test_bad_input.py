"""Bad input against one real server: every case gets its exact 4xx and a readable reason.

Path traversal in ids, tags, paths and upload file names; bodies over ``max_upload_mb`` (by
``Content-Length`` and streamed); wrong file types and contents.  After all cases the
server still answers and the stored labels are byte-for-byte what they were.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import requests

from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory
from tests.helpers import write_nifti

MAX_UPLOAD_MB = 1
TARGET = "ct_003"  # unlabeled: label uploads aim here
BOUNDARY = "activelabel-test-boundary"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def detail(self) -> str:
        return json.loads(self.body.decode("utf-8"))["detail"]


@dataclass
class Target:
    """The server under test, its studies and a folder for the files the cases send."""

    server: ServerProcess
    files: Path

    @property
    def url(self) -> str:
        return self.server.url

    def image(self) -> nib.Nifti1Image:
        return nib.load(self.server.studies / f"{TARGET}.nii.gz")

    def label(self, name: str, array: np.ndarray, *, affine: np.ndarray | None = None) -> bytes:
        """A label file's bytes; on the target's grid unless ``affine`` says otherwise."""
        path = write_nifti(self.files / name, array, affine=self.image().affine if affine is None else affine)
        return path.read_bytes()

    def good_label(self) -> bytes:
        return self.label("good.nii.gz", np.zeros(self.image().shape, np.uint8))


def raw(
    target: Target,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    chunks: Iterator[bytes] | None = None,
) -> Answer:
    """One request exactly as written (no URL normalization), over a fresh connection."""
    parsed = urllib.parse.urlsplit(target.url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
    try:
        if chunks is not None:
            connection.request(method, path, body=chunks, headers=headers or {}, encode_chunked=True)
        else:
            connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.read())
    finally:
        connection.close()


def multipart(field: str, filename: str, content: bytes, *, params: dict[str, Any] | None = None) -> bytes:
    """A ``multipart/form-data`` body written by hand, so file names go out unchanged."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{json.dumps(params or {})}\r\n'.encode(),
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'.encode()
        + b"Content-Type: application/octet-stream\r\n\r\n"
        + content
        + b"\r\n",
        f"--{BOUNDARY}--\r\n".encode(),
    ]
    return b"".join(parts)


def upload(target: Target, method: str, path: str, field: str, filename: str, content: bytes, **kw: Any) -> Answer:
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    return raw(target, method, path, body=multipart(field, filename, content, **kw), headers=headers)


def put_label(
    target: Target, content: bytes, *, image: str = TARGET, tag: str = "final", name: str = "l.nii.gz", query: str = ""
) -> Answer:
    """``PUT /datastore/label``; ``query`` is sent as written when given."""
    query = query or urllib.parse.urlencode({"image": image, "tag": tag})
    return upload(target, "PUT", f"/datastore/label?{query}", "label", name, content)


def put_image(target: Target, content: bytes, *, image: str = "new_image", name: str = "new.nii.gz") -> Answer:
    query = urllib.parse.urlencode({"image": image})
    return upload(target, "PUT", f"/datastore/image?{query}", "file", name, content)


def infer_with_params(target: Target, params: dict[str, Any]) -> Answer:
    """``POST /infer`` with a ``params`` form field, which MONAI Label merges into the request."""
    response = requests.post(
        f"{target.url}/infer/segmentation",
        params={"image": TARGET},
        data={"params": json.dumps(params)},
        timeout=120,
    )
    return Answer(response.status_code, response.content)


def _volume(name: str, target: Target, array: np.ndarray) -> bytes:
    return write_nifti(target.files / name, array, affine=target.image().affine).read_bytes()


def _shifted(target: Target) -> np.ndarray:
    affine = target.image().affine.copy()
    affine[:3, 3] += 10.0
    return affine


def _scaled(target: Target) -> np.ndarray:
    affine = target.image().affine.copy()
    affine[0, 0] *= 1.5
    return affine


def _flipped(target: Target) -> np.ndarray:
    return target.image().affine @ np.diag([-1.0, 1.0, 1.0, 1.0])


def _with(shape: tuple[int, ...], value: float, dtype: Any) -> np.ndarray:
    array = np.zeros(shape, dtype)
    array[(2,) * len(shape)] = value
    return array


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A multipart label upload of ``total`` content bytes, streamed without a length."""
    yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="label"; filename="big.nii.gz"\r\n\r\n'.encode()
    sent = 0
    while sent < total:
        yield b"\0" * min(size, total - sent)
        sent += size
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


Send = Callable[[Target], Answer]

CASES: list[tuple[str, Send, int, str]] = [
    # ---- ids, tags and paths that would leave the datastore: 400
    ("image id ../", lambda t: raw(t, "GET", "/datastore/image?image=../ct_000"), 400, "contains '/'"),
    ("image id ..%2F", lambda t: raw(t, "GET", "/datastore/image?image=..%2Fct_000"), 400, "contains '/'"),
    ("image id absolute", lambda t: raw(t, "GET", "/datastore/image?image=/etc/passwd"), 400, "contains '/'"),
    ("image id NUL", lambda t: raw(t, "GET", "/datastore/image?image=ct_000%00.nii"), 400, "contains a NUL byte"),
    ("image id ..", lambda t: raw(t, "GET", "/datastore/image?image=.."), 400, "it names a folder"),
    ("image id backslash", lambda t: raw(t, "HEAD", "/datastore/image?image=..%5Cx"), 400, ""),
    ("label id ../", lambda t: raw(t, "GET", "/datastore/label?label=../../x&tag=final"), 400, "contains '/'"),
    ("label tag ../", lambda t: put_label(t, t.good_label(), tag="../../escape"), 400, "label tag"),
    (
        "label tag %2F",
        lambda t: put_label(t, t.good_label(), query=f"image={TARGET}&tag=..%2F..%2Fescape"),
        400,
        "label tag",
    ),
    ("label tag NUL", lambda t: put_label(t, t.good_label(), tag="final\0"), 400, "contains a NUL byte"),
    ("label tag absolute", lambda t: put_label(t, t.good_label(), tag="/tmp/escape"), 400, "label tag"),
    ("label image ../", lambda t: put_label(t, t.good_label(), image=f"../{TARGET}"), 400, "image id"),
    ("upload name ..", lambda t: put_label(t, t.good_label(), name="labels/.."), 400, "it names a folder"),
    ("upload name control", lambda t: put_label(t, t.good_label(), name="a\x07.nii.gz"), 400, "control character"),
    ("upload name NUL", lambda t: put_label(t, t.good_label(), name="a\0.nii.gz"), 400, "contains a NUL byte"),
    ("new image id ../", lambda t: put_image(t, t.good_label(), image="../../escape"), 400, "image id"),
    ("infer image absolute", lambda t: raw(t, "POST", "/infer/segmentation?image=/etc/hostname"), 400, "'/'"),
    ("infer image ../", lambda t: raw(t, "POST", "/infer/segmentation?image=../../etc/hostname"), 400, "'/'"),
    ("infer params image path", lambda t: infer_with_params(t, {"image": "/etc/hostname"}), 400, "outside the"),
    ("path ..%2F segment", lambda t: raw(t, "POST", "/infer/..%2F..%2Fetc"), 400, "'..' segment"),
    ("path NUL", lambda t: raw(t, "POST", "/activelearning/random%00"), 400, "contains a NUL byte"),
    ("uncertainty map ../", lambda t: raw(t, "GET", "/activelabel/uncertainty-map?image=../x"), 400, "'/'"),
    ("skip ..", lambda t: raw(t, "POST", "/activelabel/skip?image=..&client_id=a"), 400, "it names a folder"),
    ("label versions ..", lambda t: raw(t, "GET", "/activelabel/labels/..%2F..%2Fx/versions"), 400, "segment"),
    # ---- unknown ids: 404
    ("label for unknown image", lambda t: put_label(t, t.good_label(), image="no_such_image"), 404, "unknown image"),
    ("infer unknown image", lambda t: raw(t, "POST", "/infer/segmentation?image=no_such_image"), 404, "unknown image"),
    # ---- too large: 413
    (
        "Content-Length over the limit",
        lambda t: raw(
            t, "PUT", f"/datastore/label?image={TARGET}", headers={"Content-Length": str(50 * 2**30)}, body=None
        ),
        413,
        "larger than the server's limit of 1 MiB",
    ),
    (
        "streamed body over the limit",
        lambda t: raw(
            t,
            "PUT",
            f"/datastore/label?image={TARGET}&tag=final",
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            chunks=_chunks(int(1.5 * 2**20)),
        ),
        413,
        "larger than the server's limit of 1 MiB",
    ),
    (
        "infer upload over the limit",
        lambda t: upload(t, "POST", "/infer/segmentation", "file", "big.nii.gz", b"\0" * (2 * 2**20)),
        413,
        "larger than the server's limit",
    ),
    ("delete label tag ../", lambda t: raw(t, "DELETE", "/datastore/label?id=ct_000&tag=../final"), 400, "label tag"),
    # ---- wrong file type or unreadable: 415
    ("label .txt", lambda t: put_label(t, t.good_label(), name="label.txt"), 415, "file type '.txt' is not accepted"),
    ("label no suffix", lambda t: put_label(t, t.good_label(), name="label"), 415, "file type 'none'"),
    ("label corrupt", lambda t: put_label(t, b"\x1f\x8b not a volume"), 415, "not a readable medical image"),
    ("label empty file", lambda t: put_label(t, b""), 415, "not a readable medical image"),
    ("label text as .nii.gz", lambda t: put_label(t, b"just some text"), 415, "not a readable medical image"),
    ("image .png", lambda t: put_image(t, t.good_label(), name="scan.png"), 415, "file type '.png'"),
    ("image corrupt", lambda t: put_image(t, b"garbage"), 415, "not a readable medical image"),
    # ---- wrong content: 422
    ("label shape", lambda t: put_label(t, t.label("s.nii.gz", np.zeros((9, 9, 9), np.uint8))), 422, "shape"),
    ("label 4-D", lambda t: put_label(t, t.label("4d.nii.gz", np.zeros((*t.image().shape, 2), np.uint8))), 422, "3D"),
    (
        "label origin",
        lambda t: put_label(t, t.label("o.nii.gz", np.zeros(t.image().shape, np.uint8), affine=_shifted(t))),
        422,
        "origin",
    ),
    (
        "label spacing",
        lambda t: put_label(t, t.label("p.nii.gz", np.zeros(t.image().shape, np.uint8), affine=_scaled(t))),
        422,
        "spacing",
    ),
    (
        "label orientation",
        lambda t: put_label(t, t.label("d.nii.gz", np.zeros(t.image().shape, np.uint8), affine=_flipped(t))),
        422,
        "orientation",
    ),
    (
        "label NaN",
        lambda t: put_label(t, t.label("n.nii.gz", _with(t.image().shape, np.nan, np.float32))),
        422,
        "NaN",
    ),
    (
        "label fractional",
        lambda t: put_label(t, t.label("f.nii.gz", _with(t.image().shape, 0.5, np.float32))),
        422,
        "integers",
    ),
    (
        "label unknown value",
        lambda t: put_label(t, t.label("u.nii.gz", _with(t.image().shape, 9, np.uint8))),
        422,
        "[9] are not among",
    ),
    (
        "label negative value",
        lambda t: put_label(t, t.label("m.nii.gz", _with(t.image().shape, -1, np.int16))),
        422,
        "[-1] are not among",
    ),
    (
        "label complex",
        lambda t: put_label(t, t.label("c.nii.gz", np.zeros(t.image().shape, np.complex64))),
        422,
        "complex",
    ),
    ("image 4-D", lambda t: put_image(t, _volume("i4.nii.gz", t, np.zeros((8, 8, 8, 3), np.float32))), 422, "3D"),
    ("image 2-D", lambda t: put_image(t, _volume("i2.nii.gz", t, np.zeros((8, 8), np.float32))), 422, "3D"),
    (
        "image NaN",
        lambda t: put_image(t, _volume("in.nii.gz", t, _with((8, 8, 8), np.nan, np.float32))),
        422,
        "NaN or infinite",
    ),
    (
        "image infinite",
        lambda t: put_image(t, _volume("ii.nii.gz", t, _with((8, 8, 8), np.inf, np.float64))),
        422,
        "NaN or infinite",
    ),
    (
        "image complex",
        lambda t: put_image(t, _volume("ic.nii.gz", t, np.zeros((8, 8, 8), np.complex64))),
        422,
        "complex",
    ),
]


def _label_files(studies: Path) -> dict[str, bytes]:
    return {str(p.relative_to(studies)): p.read_bytes() for p in sorted((studies / "labels").rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def target(server_factory: ServerFactory) -> Target:
    """One server (uploads limited to 1 MiB) on four CT phantoms, two labeled."""
    studies = server_factory.phantoms("bad-input", count=4, seed=0, labeled=2)
    running = server_factory.start(studies, conf={"max_upload_mb": str(MAX_UPLOAD_MB)})
    files = studies.parent / "files"
    files.mkdir()
    return Target(running, files)


@pytest.fixture(scope="module")
def labels_before(target: Target) -> dict[str, bytes]:
    return _label_files(target.server.studies)


@pytest.mark.parametrize(("send", "status", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_with_a_reason(
    target: Target, labels_before: dict[str, bytes], send: Send, status: int, reason: str
) -> None:
    answer = send(target)
    assert answer.status == status, answer.body[:500]
    if answer.body or status != 400:  # a HEAD answer has no body
        detail = answer.detail()
        assert isinstance(detail, str)
        assert reason in detail
        assert 10 <= len(detail) <= 300
        assert "Traceback" not in detail


def test_the_server_is_still_up_and_the_labels_are_unchanged(target: Target, labels_before: dict[str, bytes]) -> None:
    assert requests.get(f"{target.url}/info/", timeout=30).status_code == 200
    studies = target.server.studies
    assert _label_files(studies) == labels_before
    assert not list(studies.parent.rglob("escape*"))
    assert sorted(p.name for p in studies.glob("*.nii.gz")) == [f"ct_00{i}.nii.gz" for i in range(4)]
    assert "access control: off (loopback only)" in target.server.log.read_text()


def test_a_good_label_is_still_accepted(target: Target) -> None:
    """The checks do not reject what they should accept (run last: it adds a label).

    Clients may send a whole path as the file name (MONAI Label's client does): only its last
    component counts, so the label lands in the datastore and nowhere else.
    """
    answer = put_label(target, target.good_label(), name="../../escape/l.nii.gz")
    assert answer.status == 200, answer.body[:500]
    studies = target.server.studies
    assert (studies / "labels" / "final" / f"{TARGET}.nii.gz").read_bytes() == target.good_label()
    assert not list(studies.parent.rglob("escape*"))
