"""multipart/form-data encoding and decoding with the standard library only.

MONAI Label takes uploads (labels, infer parameters) as multipart forms and answers an
infer request with a multipart body holding a JSON part and the label file.  Slicer's
Python has no guarantee of ``requests_toolbelt`` (nor of ``cgi``, gone in Python 3.13),
so the few lines needed live here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ActiveLabelError

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_NAME = re.compile(r'\bname="([^"]*)"', re.IGNORECASE)
_FILENAME = re.compile(r'\bfilename="([^"]*)"', re.IGNORECASE)


@dataclass(frozen=True)
class FilePart:
    """A file to upload: the name the server sees and its bytes."""

    filename: str
    content: bytes
    content_type: str = "application/octet-stream"


@dataclass
class Form:
    """A decoded multipart body: text fields by name and files by name."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, FilePart] = field(default_factory=dict)


def encode(fields: Mapping[str, str], files: Mapping[str, FilePart]) -> tuple[str, bytes]:
    """The ``Content-Type`` header and body of a multipart/form-data request."""
    boundary = f"activelabel-{uuid.uuid4().hex}"
    chunks: list[bytes] = []
    for name, value in fields.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        chunks.append(value.encode() + b"\r\n")
    for name, part in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{part.filename}"\r\n'
            f"Content-Type: {part.content_type}\r\n\r\n"
        )
        chunks.append(head.encode() + part.content + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks)


def decode(content_type: str, body: bytes) -> Form:
    """Split a multipart body into text fields and files (parts that carry a filename).

    Raises:
        ActiveLabelError: when the content type names no boundary or the body does not use it.
    """
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise ActiveLabelError(f"the server's answer is not multipart (content type {content_type!r})")
    delimiter = b"--" + match.group(1).encode()
    pieces = body.split(delimiter)
    if len(pieces) < 3:
        raise ActiveLabelError("the server's multipart answer holds no parts")
    form = Form()
    for piece in pieces[1:-1]:  # before the first delimiter: preamble; after the last: "--" epilogue
        head, _, content = piece.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        content = content.removesuffix(b"\r\n")
        headers = _headers(head.decode("utf-8", errors="replace"))
        disposition = headers.get("content-disposition", "")
        name = _first(_NAME, disposition)
        filename = _first(_FILENAME, disposition)
        if filename:
            content_type_of_part = headers.get("content-type", "application/octet-stream")
            form.files[name or filename] = FilePart(filename, content, content_type_of_part)
        elif name:
            form.fields[name] = content.decode("utf-8", errors="replace")
    return form


def _headers(block: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in block.split("\r\n") if ":" in line)
    return {key.strip().lower(): value.strip() for key, value in pairs}


def _first(pattern: re.Pattern[str], text: str) -> str:
    match = pattern.search(text)
    return match.group(1) if match else ""
