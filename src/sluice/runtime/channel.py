"""The invocation channel between the supervisor and one environment: two pipes (one each way)
carrying fixed binary headers.

Pipes rather than a socketpair, and a ``struct`` header rather than JSON, because this is the
warm path: a pipe write and read cost half what a Unix socket's do, and packing a few numbers
is a fraction of encoding and parsing a JSON object on both sides.

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
from typing import Any, NamedTuple

import orjson

REQUEST = struct.Struct("<IHId")  # payload length, id length, extra length, deadline
MAX_ID = 0xFFFF
ANSWER = struct.Struct("<IBddQQ")  # body length, status, ms, init ms (NaN: none), log, rss kB
OK, ERROR, INVALID = 0, 1, 2
NO_INIT = math.nan
READ_SIZE = 256 * 1024
MAX_FRAME = 1 << 30  # a sanity bound: a corrupt header must not make us allocate gigabytes


class ChannelError(Exception):
    """The peer sent something that is not a frame, or stopped inside one."""


class Request(NamedTuple):
    request_id: str
    deadline: float
    extra: dict[str, Any] | None  # client_context and identity, when the caller gave them
    payload: bytes


class Answer(NamedTuple):
    status: int
    ms: float
    init_ms: float | None
    log: int  # bytes the invocation wrote to its output
    rss_kb: int  # the environment's peak RSS so far
    body: bytes


# A NamedTuple's own constructor is a Python function; tuple.__new__ builds one in C.
_new = tuple.__new__


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
    return b"".join((head, request_id, extra, payload))


def encode_answer(
    status: int, ms: float, init_ms: float | None, log: int, rss_kb: int, body: bytes
) -> bytes:
    init = NO_INIT if init_ms is None else init_ms
    return ANSWER.pack(len(body), status, ms, init, log, rss_kb) + body


def _request_size(view: memoryview | bytearray) -> int:
    payload, rid, more, _ = REQUEST.unpack_from(view)
    return REQUEST.size + rid + more + payload


def _request(view: memoryview | bytes) -> Request:
    payload_len, rid_len, more_len, deadline = REQUEST.unpack_from(view)
    start = REQUEST.size
    request_id = str(view[start : start + rid_len], "utf-8")
    start += rid_len
    extra = orjson.loads(view[start : start + more_len]) if more_len else None
    start += more_len
    return _new(Request, (request_id, deadline, extra, bytes(view[start : start + payload_len])))


def _answer_size(view: memoryview | bytearray | bytes) -> int:
    return ANSWER.size + ANSWER.unpack_from(view)[0]


def _answer(data: memoryview | bytes) -> Answer:
    body_len, status, ms, init_ms, log, rss_kb = ANSWER.unpack_from(data)
    body = bytes(data[ANSWER.size : ANSWER.size + body_len])
    return _new(Answer, (status, ms, None if math.isnan(init_ms) else init_ms, log, rss_kb, body))


class RequestReader:
    """The environment's blocking reads of requests from its pipe: one ``readv`` into a reused
    buffer for the usual small request, more only when it is larger."""

    __slots__ = ("_buf", "_fd", "_pending", "_view")

    def __init__(self, fd: int, size: int = READ_SIZE) -> None:
        self._fd = fd
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._pending = bytearray()  # a frame that did not fit in one read, or what followed it

    def read(self) -> Request | None:
        """The next request; None at a clean end of stream (ChannelError inside a frame)."""
        if not self._pending:
            n = os.readv(self._fd, [self._view])
            if n >= REQUEST.size and n == _request_size(self._view):
                return _request(self._view)
            if not n:
                return None
            self._pending += self._view[:n]
        return self._read_pending()

    def _read_pending(self) -> Request:
        pending = self._pending
        while len(pending) < REQUEST.size or len(pending) < _request_size(pending):
            if len(pending) >= REQUEST.size and _request_size(pending) > MAX_FRAME:
                raise ChannelError(f"request of {_request_size(pending)} bytes is over the limit")
            n = os.readv(self._fd, [self._view])
            if not n:
                raise ChannelError("stream ended inside a request")
            pending += self._view[:n]
        size = _request_size(pending)
        request = _request(bytes(pending[:size]))
        del pending[:size]
        return request


def write_all(fd: int, data: bytes) -> None:
    """Blocking write of all of ``data`` (a pipe takes a large write in pieces)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class AnswerParser:
    """The supervisor's side: feed what the answer pipe gave, take whole answers."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Answer]:
        buf = self._buf
        # The usual answer arrives whole in one read: parse it in place, no buffering.
        if not buf and len(data) >= ANSWER.size and len(data) == _answer_size(data):
            return [_answer(data)]
        buf += data
        answers = []
        while len(buf) >= ANSWER.size:
            size = _answer_size(buf)
            if size > MAX_FRAME:
                raise ChannelError(f"answer of {size} bytes is over the limit")
            if len(buf) < size:
                break
            with memoryview(buf) as view:
                answers.append(_answer(view[:size]))
            del buf[:size]
        return answers
