"""The file names in a ``multipart/form-data`` body, found while the body streams in.

The request guard checks upload file names before the web framework writes the parts to
disk; this scanner only looks at the part headers and keeps at most one header's worth of
the stream, so a body of any size costs constant memory.
"""

from __future__ import annotations

import re
import urllib.parse

MAX_HEADER_BYTES = 16 * 1024
"""Part headers longer than this are skipped (the form parser rejects them anyway)."""

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_FILENAME = re.compile(rb'filename(\*?)=(?:"((?:[^"\\]|\\.)*)"|([^;\r\n]*))', re.IGNORECASE)


def _decode(raw: bytes, *, extended: bool) -> str:
    text = raw.decode("utf-8", errors="replace")
    if extended:
        _, _, encoded = text.partition("''")
        return urllib.parse.unquote(encoded or text)
    return re.sub(r"\\(.)", r"\1", text)


def part_filenames(header_block: bytes) -> list[str]:
    """The ``filename`` values in one part's header block."""
    names = []
    for match in _FILENAME.finditer(header_block):
        raw = match.group(2) if match.group(2) is not None else match.group(3).strip()
        names.append(_decode(raw, extended=bool(match.group(1))))
    return names


class FilenameScanner:
    """Feed it the body in chunks; each call returns the file names whose headers completed.

    Args:
        content_type: the request's ``Content-Type``; a body that is not multipart yields nothing.
    """

    def __init__(self, content_type: str) -> None:
        match = _BOUNDARY.search(content_type) if content_type.lower().startswith("multipart/") else None
        self._delimiter = b"--" + match.group(1).encode("latin-1") + b"\r\n" if match else b""
        self._buffer = b""
        self._base = 0  # stream offset of self._buffer[0]
        self._next = 0  # stream offset where the next delimiter search starts

    def feed(self, chunk: bytes) -> list[str]:
        if not self._delimiter:
            return []
        self._buffer += chunk
        names: list[str] = []
        pending = False
        while True:
            start = self._buffer.find(self._delimiter, self._next - self._base)
            if start < 0:
                break
            head = start + len(self._delimiter)
            end = self._buffer.find(b"\r\n\r\n", head, head + MAX_HEADER_BYTES)
            if end < 0:
                if len(self._buffer) - head < MAX_HEADER_BYTES:
                    self._next = self._base + start  # the header is still arriving
                    pending = True
                    break
                self._next = self._base + head  # an over-long header: skip it
                continue
            names += part_filenames(self._buffer[head:end])
            self._next = self._base + end + 4
        if not pending:  # keep only what may be the start of a delimiter split across chunks
            self._next = max(self._next, self._base + len(self._buffer) - len(self._delimiter) + 1)
        keep = self._next - self._base
        self._buffer = self._buffer[keep:]
        self._base += keep
        return names
