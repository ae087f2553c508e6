"""Wire format between the task client and the task worker: length-prefixed JSON over a Unix socket.

A task client sends one request (the MONAI Label app arguments, its environment and working
directory) together with its stdout and stderr file descriptors; the worker answers once when
the forked task process has started (its pid) and once when it has ended (its exit code).
Passing the descriptors lets the task write straight into the pipe MONAI Label reads, so the
worker never relays output.

Standard library only: the client imports this module and must start in milliseconds.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from activelabel.errors import ActiveLabelError

STOCK_MODULE = "monailabel.interfaces.utils.app"
"""The module MONAI Label runs in a fresh Python process for every background task."""

HEADER = struct.Struct("!I")
"""Each message: its JSON body's length as 4 bytes (network order), then the body."""

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""A request carries an environment and a JSON task request; anything larger is a bad message."""

STREAM_FDS = 2
"""Descriptors sent with a request: the client's stdout and stderr."""


class ProtocolError(ActiveLabelError):
    """A message that is truncated, too large or not the expected JSON object."""


@dataclass(frozen=True)
class TaskRequest:
    """What the forked task process needs to behave like MONAI Label's own task process.

    Attributes:
        argv: arguments after ``python -m monailabel.interfaces.utils.app``.
        env: the environment MONAI Label gave the task process.
        cwd: the working directory of the task process.
    """

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str

    def to_message(self) -> dict[str, Any]:
        return {"argv": list(self.argv), "env": self.env, "cwd": self.cwd}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> TaskRequest:
        """Raises:
        ProtocolError: when a field is missing or has the wrong type.
        """
        argv, env, cwd = message.get("argv"), message.get("env"), message.get("cwd")
        if not isinstance(argv, list) or not all(isinstance(item, str) for item in argv):
            raise ProtocolError("request field 'argv' must be a list of strings")
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ProtocolError("request field 'env' must map strings to strings")
        if not isinstance(cwd, str):
            raise ProtocolError("request field 'cwd' must be a string")
        return cls(argv=tuple(argv), env=dict(env), cwd=cwd)


def encode(message: dict[str, Any]) -> bytes:
    """The framed bytes of one message."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    """One message body as a JSON object.

    Raises:
        ProtocolError: when the body is not a JSON object.
    """
    try:
        message = json.loads(body)
    except ValueError as error:
        raise ProtocolError(f"message is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise ProtocolError("message is not a JSON object")
    return message


def send_message(sock: socket.socket, message: dict[str, Any], *, fds: Sequence[int] = ()) -> None:
    """Send one message; ``fds`` travel with its header (SCM_RIGHTS)."""
    data = encode(message)
    if fds:
        sent = socket.send_fds(sock, [data[: HEADER.size]], list(fds))
        if sent != HEADER.size:
            raise ProtocolError("short write of a message header")
        data = data[HEADER.size :]
    sock.sendall(data)


def receive_message(sock: socket.socket, *, max_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the descriptors that came with it; ``(None, [])`` when the peer closed first.

    The caller owns the returned descriptors (also when this raises after receiving them,
    they are closed here).

    Raises:
        ProtocolError: on a truncated, oversized or malformed message.
    """
    if max_fds:
        header, fds, _flags, _address = socket.recv_fds(sock, HEADER.size, max_fds)
    else:
        header, fds = sock.recv(HEADER.size), []
    try:
        if not header:
            _close_all(fds)
            return None, []
        header += _receive_exact(sock, HEADER.size - len(header))
        (length,) = HEADER.unpack(header)
        if length > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"message of {length} bytes exceeds {MAX_MESSAGE_BYTES}")
        return decode_body(_receive_exact(sock, length)), list(fds)
    except BaseException:
        _close_all(fds)
        raise


def _receive_exact(sock: socket.socket, count: int) -> bytes:
    chunks: list[bytes] = []
    while count > 0:
        chunk = sock.recv(min(count, 1 << 20))
        if not chunk:
            raise ProtocolError("connection closed in the middle of a message")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


def exit_code(wait_status: int) -> int:
    """A process exit code from a ``waitpid`` status: ``128 + N`` for death by signal N, as shells report it."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code
