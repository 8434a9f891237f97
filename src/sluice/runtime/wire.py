"""Length-prefixed frames over a Unix stream socket.

A frame is ``!II`` (header length, body length), an orjson header, then the body bytes exactly as
given: payloads pass through without being decoded or re-encoded.
"""

from __future__ import annotations

import array
import socket
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson

PREFIX = struct.Struct("!II")
MAX_FRAME = 1 << 30  # a sanity bound: a corrupt prefix must not make us allocate gigabytes
SMALL_FRAME = 64 * 1024  # below this, one joined send is cheaper than a gathered sendmsg

Frame = tuple[dict[str, Any], bytes]


class WireError(Exception):
    """The peer sent something that is not a frame."""


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return b"".join((PREFIX.pack(len(head), len(body)), head, body))


def write(sock: socket.socket, header: dict[str, Any], body: bytes = b"") -> None:
    """Blocking write of one frame (gathered, so a large body is not copied)."""
    head = orjson.dumps(header)
    if len(body) < SMALL_FRAME:
        sock.sendall(PREFIX.pack(len(head), len(body)) + head + body)
        return
    parts = [PREFIX.pack(len(head), len(body)), head, body]
    total = sum(len(p) for p in parts)
    sent = sock.sendmsg(parts)
    if sent < total:  # interrupted part-way: finish the rest the simple way
        sock.sendall(b"".join(parts)[sent:])


def read(stream: BinaryIO) -> Frame | None:
    """Blocking read of one frame from a buffered stream; None at a clean end of stream."""
    prefix = stream.read(PREFIX.size)
    if not prefix:
        return None
    if len(prefix) < PREFIX.size:
        raise WireError("stream ended inside a frame prefix")
    head_len, body_len = PREFIX.unpack(prefix)
    if head_len + body_len > MAX_FRAME:
        raise WireError(f"frame of {head_len + body_len} bytes is over the limit")
    head = stream.read(head_len)
    body = stream.read(body_len) if body_len else b""
    if len(head) < head_len or len(body) < body_len:
        raise WireError("stream ended inside a frame")
    return orjson.loads(head), body


class FrameBuffer:
    """Incremental parser for the non-blocking side: feed bytes, take whole frames."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def __bool__(self) -> bool:
        """True while part of a frame is buffered."""
        return bool(self._buf)

    def feed(self, data: bytes | memoryview) -> Iterator[Frame]:
        buf = self._buf
        buf += data
        while len(buf) >= PREFIX.size:
            head_len, body_len = PREFIX.unpack_from(buf)
            if head_len + body_len > MAX_FRAME:
                raise WireError(f"frame of {head_len + body_len} bytes is over the limit")
            end = PREFIX.size + head_len + body_len
            if len(buf) < end:
                return
            header = orjson.loads(buf[PREFIX.size : PREFIX.size + head_len])
            body = bytes(buf[PREFIX.size + head_len : end])
            del buf[:end]
            yield header, body


def send_with_fds(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    """Send ``data`` with ``fds`` attached (SCM_RIGHTS); the socket may be non-blocking."""
    sent = socket.send_fds(sock, [data], fds)
    if sent < len(data):
        sock.sendall(data[sent:])


def recv_with_fds(
    sock: socket.socket, maxfds: int, bufsize: int = 65536
) -> tuple[bytes, list[int]]:
    """Receive bytes and any descriptors that came with them (blocking socket)."""
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(bufsize, socket.CMSG_LEN(maxfds * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    return data, list(fds)
