"""Atomic file writes: readers see the old file or the new one, never a torn one."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None], *, suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over.

    The temporary file lives in the destination directory so the rename is atomic on
    POSIX file systems; it is removed if ``write`` fails.  Its name starts with a dot and
    ends with ``suffix`` (a writer that picks the format by extension needs the real one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: str | Path, default: Any = None) -> Any:
    """Parsed JSON of ``path``, or ``default`` when the file does not exist."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default


# atomic_write's temporary names: ".<target name>.<mkstemp's 8 random characters><suffix>".
_PARTIAL = re.compile(r"^\..+\.[A-Za-z0-9_]{8}(?:\.tmp|\.nii\.gz|\.nrrd|\.nii)$")


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` calls a kill interrupted, below ``folder``.

    Such a file was never renamed into place, so no reader uses it; it only takes space.  Call
    this only while nothing writes there (at server start, before any task runs).  Returns the
    removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob(".*"):
        if path.is_file() and _PARTIAL.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
