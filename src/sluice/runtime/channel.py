"""The invocation channel between the supervisor and one environment: two pipes (one each way)
carrying fixed binary headers.

Pipes rather than a socketpair, and a ``struct`` header rather than JSON, because this is the
warm path: a round trip over a socket pair costs 1.68x one over pipes (benchmarks/ipc_bench.py),
and packing a few numbers is a fraction of encoding and parsing a JSON object on both sides.

A request is ``REQUEST`` (payload, request id and extra lengths, the deadline), the request id
(UTF-8), the extra (JSON with ``client_context``/``identity``, usually empty) and the payload.
An answer is ``ANSWER`` (body length, status, duration, init duration, output bytes, max RSS)
and the body: the result's JSON, Lambda's error object, or (``INVALID``) the reason the payload
was refused. Payloads and bodies pass through as given, never re-encoded.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping
from typing import Any

import orjson

REQUEST = struct.Struct("<IHId")  # payload length, id length, extra length, deadline
MAX_ID = 0xFFFF
ANSWER = struct.Struct("<IBddQQ")  # body length, status, ms, init ms (NaN: none), log, rss kB
OK, ERROR, INVALID = 0, 1, 2
NO_INIT = math.nan
READ_SIZE = 64 * 1024  # os.read allocates this much: a larger size costs an mmap per read
MAX_FRAME = 1 << 30  # a sanity bound: a corrupt header must not make us allocate gigabytes


class ChannelError(Exception):
    """The peer sent something that is not a frame, or stopped inside one."""


# A request: its id, deadline (time.monotonic()), extra (client_context and identity, when the
# caller gave them) and payload. Requests and answers are plain tuples: each is unpacked at
# once, and building a NamedTuple costs several times as much.
Request = tuple[str, float, dict[str, Any] | None, bytes]

# An answer: status, ms, init ms (None: none), bytes the invocation wrote to its output, the
# environment's peak RSS so far (kB), body.
Answer = tuple[int, float, float | None, int, int, bytes]


def encode_extra(
    client_context: Mapping[str, Any] | None, identity: Mapping[str, Any] | None
) -> bytes:
    """The request's extra part: empty unless the caller gave a client context or identity."""
    extra = {}
    if client_context:
        extra["client_context"] = dict(client_context)
    if identity:
        extra["identity"] = dict(identity)
    return orjson.dumps(extra) if extra else b""


def encode_request(request_id: bytes, deadline: float, extra: bytes, payload: bytes) -> bytes:
    """``request_id`` is UTF-8 (at most MAX_ID bytes); ``extra`` from `encode_extra`."""
    head = REQUEST.pack(len(payload), len(request_id), len(extra), deadline)
    return head + request_id + extra + payload  # cheaper than a join for these few parts


def encode_answer(
    status: int, ms: float, init_ms: float | None, log: int, rss_kb: int, body: bytes
) -> bytes:
    init = NO_INIT if init_ms is None else init_ms
    return ANSWER.pack(len(body), status, ms, init, log, rss_kb) + body


def _request_size(data: bytes | bytearray) -> int:
    payload, rid, more, _ = REQUEST.unpack_from(data)
    return REQUEST.size + rid + more + payload


def _request(data: bytes, head: tuple[int, int, int, float]) -> Request:
    """The request in ``data`` (exactly one frame), whose header ``head`` is unpacked."""
    payload_len, rid_len, more_len, deadline = head
    start = REQUEST.size + rid_len
    request_id = data[REQUEST.size : start].decode()
    extra = orjson.loads(data[start : start + more_len]) if more_len else None
    start += more_len
    return (request_id, deadline, extra, data[start : start + payload_len])


def _answer(head: tuple[int, int, float, float, int, int], body: bytes) -> Answer:
    """The answer whose header ``head`` is unpacked."""
    _, status, ms, init_ms, log, rss_kb = head
    return (status, ms, None if math.isnan(init_ms) else init_ms, log, rss_kb, body)


class RequestReader:
    """The environment's blocking reads of requests from its pipe. The usual small request
    arrives whole in one ``read``: its header is unpacked once and its parts sliced from the
    bytes read. A larger one (or a pipe that gave more or less) is gathered in a buffer."""

    __slots__ = ("_fd", "_pending")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending = bytearray()  # a frame that did not fit in one read, or what followed it

    def read(self) -> Request | None:
        """The next request; None at a clean end of stream (ChannelError inside a frame)."""
        if not self._pending:
            data = os.read(self._fd, READ_SIZE)
            if len(data) >= REQUEST.size:
                head = REQUEST.unpack_from(data)
                if len(data) == REQUEST.size + head[0] + head[1] + head[2]:
                    return _request(data, head)
            elif not data:
                return None
            self._pending += data
        return self._read_pending()

    def _read_pending(self) -> Request:
        pending = self._pending
        while len(pending) < REQUEST.size or len(pending) < _request_size(pending):
            if len(pending) >= REQUEST.size and _request_size(pending) > MAX_FRAME:
                raise ChannelError(f"request of {_request_size(pending)} bytes is over the limit")
            data = os.read(self._fd, READ_SIZE)
            if not data:
                raise ChannelError("stream ended inside a request")
            pending += data
        size = _request_size(pending)
        frame = bytes(pending[:size])
        del pending[:size]
        return _request(frame, REQUEST.unpack_from(frame))


def write_all(fd: int, data: bytes) -> None:
    """Blocking write of all of ``data`` (a pipe takes a large write in pieces)."""
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


class AnswerParser:
    """The supervisor's side: feed what the answer pipe gave, take whole answers."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Answer]:
        buf = self._buf
        # The usual answer arrives whole in one read: parse it as it is, no buffering.
        if not buf and len(data) >= ANSWER.size:
            head = ANSWER.unpack_from(data)
            if len(data) == ANSWER.size + head[0]:
                return [_answer(head, data[ANSWER.size :])]
        buf += data
        answers = []
        while len(buf) >= ANSWER.size:
            head = ANSWER.unpack_from(buf)
            size = ANSWER.size + head[0]
            if size > MAX_FRAME:
                raise ChannelError(f"answer of {size} bytes is over the limit")
            if len(buf) < size:
                break
            with memoryview(buf) as view:  # released before buf is resized
                answers.append(_answer(head, bytes(view[ANSWER.size : size])))
            del buf[:size]
        return answers
