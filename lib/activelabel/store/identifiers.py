"""Checks that ids, label tags, file names and URL paths cannot reach outside the datastore.

Image ids and label tags become file and folder names inside the studies folder, so they must
be single, plain path components; server-side paths in requests must lie inside the datastore
or be the server's own upload files.  Each check raises
:class:`~activelabel.store.validation.InputRejected` (HTTP 400) with one readable sentence.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from activelabel.store.validation import InputRejected

MAX_NAME_LENGTH = 255
"""Longest id, tag or file name accepted (the usual file-system limit for one component)."""

ID_PARAMETERS = ("image", "label", "id", "tag", "session_id")
"""Query parameters that name datastore objects (MONAI Label's and ours)."""


def _unsafe_character(value: str) -> str | None:
    for char in value:
        if char in "/\\":
            return repr(char)
        if ord(char) < 32 or ord(char) == 127:
            return "a NUL byte" if char == "\0" else "a control character"
    return None


def check_name(value: str, *, what: str) -> str:
    """``value`` must be one plain path component: no separators, control characters, ``.`` or ``..``."""
    if not value:
        raise InputRejected(f"the {what} is empty", status=400)
    if len(value) > MAX_NAME_LENGTH:
        raise InputRejected(f"the {what} is longer than {MAX_NAME_LENGTH} characters", status=400)
    bad = _unsafe_character(value)
    if bad:
        raise InputRejected(f"the {what} {value!r} is not allowed: it contains {bad}", status=400)
    if value in (".", ".."):
        raise InputRejected(f"the {what} {value!r} is not allowed: it names a folder", status=400)
    return value


def check_url_path(path: str) -> None:
    """A decoded URL path may not hold ``.``/``..`` segments, backslashes or control characters."""
    bad = next((char for char in path if char == "\\" or ord(char) < 32 or ord(char) == 127), None)
    if bad is not None:
        what = "a NUL byte" if bad == "\0" else "a backslash" if bad == "\\" else "a control character"
        raise InputRejected(f"the request path contains {what}", status=400)
    if any(segment in (".", "..") for segment in path.split("/")):
        raise InputRejected("the request path contains a '.' or '..' segment", status=400)


def check_upload_filename(name: str) -> None:
    """An uploaded file's name may not hold control characters nor end in a folder name.

    Clients send whole paths (MONAI Label's own client does); the server keeps only the last
    component, whose suffix decides the stored file's type.  An empty name is what browsers
    send for a file field left empty.
    """
    if not name:
        return
    bad = next((char for char in name if ord(char) < 32 or ord(char) == 127), None)
    if bad is not None:
        what = "a NUL byte" if bad == "\0" else "a control character"
        raise InputRejected(f"the uploaded file name {name!r} is not allowed: it contains {what}", status=400)
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if base in ("", ".", ".."):
        raise InputRejected(f"the uploaded file name {name!r} is not allowed: it names a folder", status=400)
    if len(base) > MAX_NAME_LENGTH:
        raise InputRejected(f"the uploaded file name is longer than {MAX_NAME_LENGTH} characters", status=400)


def check_local_source(value: str, *, roots: Sequence[str | Path], upload_dir: str | Path | None = None) -> None:
    """A server-side path named in a request must lie inside one of ``roots`` or be an upload file.

    Upload files are the ``tmp*`` files MONAI Label writes directly into ``upload_dir`` (the
    system temporary folder by default).  Symbolic links and ``..`` are resolved first.
    """
    real = Path(os.path.realpath(value))
    for root in roots:
        if real.is_relative_to(Path(os.path.realpath(root))):
            return
    uploads = Path(os.path.realpath(upload_dir or tempfile.gettempdir()))
    if real.parent == uploads and real.name.startswith("tmp"):
        return
    raise InputRejected("the request names a file outside the datastore; send an image id instead", status=400)
