"""The HTTP/1.1 server: an asyncio protocol on httptools (llhttp), hardened.

Chosen over Granian and Uvicorn by measurement (docs/gateway.md). It enforces every limit in
`GatewayConfig`: body and header sizes, a deadline to receive each whole request, keep-alive
idle timeout and request count, an open-connection cap, a write-stall timeout; it refuses
request-smuggling forms with 400 and closes the connection. One sweeper task per server checks
all time limits about four times per limit period, so no timer is created per request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import httptools

from sluice.errors import PayloadTooLarge, SluiceError, Unavailable
from sluice.gateway.config import GatewayConfig
from sluice.gateway.errors import (
    BadRequest,
    ExpectationFailed,
    HeadersTooLarge,
    RequestTimeout,
    UriTooLong,
)
from sluice.gateway.wire import Request, Response, error_response, json_response

log = logging.getLogger("sluice.gateway")

# A handler answers at once (a Response), or later: a future is waited for with a callback (no
# task), anything else awaitable (a coroutine) runs as a task. A `SluiceError` it raises (at once or
# later) is answered as its JSON error; any other exception as a 500.
Handler = Callable[[Request], Response | Awaitable[Response]]

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_NO_BODY_STATUS = frozenset({204, 304})
LINGER = 2.0  # seconds a connection refused for bad input keeps draining before it closes


def _length(body: bytes) -> bytes:
    return b"content-length: %d\r\n" % len(body)


def _status_line(status: int, reason: str | None) -> bytes:
    return f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Unknown')}\r\n".encode()


# Status lines with the standard reason phrase, built once.
_STATUS_LINES = {status: _status_line(status, None) for status in _REASONS}


def failure_response(request: Request, error: BaseException, retry_after: float) -> Response:
    """The answer to a request whose handler raised ``error``: a `SluiceError` names itself."""
    if isinstance(error, SluiceError):
        return error_response(error, retry_after)
    log.error("unhandled error answering %s %s", request.method, request.path, exc_info=error)
    return json_response(500, {"error": "InternalError", "message": "internal gateway error"})


class _Reject(Exception):
    """Raised inside parser callbacks to stop parsing; the error is kept on the connection."""


class ServerState:
    """What all connections of one listening server share."""

    def __init__(
        self, config: GatewayConfig, handler: Handler, port: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.config = config
        self.handler = handler
        self.port = port
        # Held, not looked up: on CPython 3.11 every asyncio.get_running_loop() is a getpid()
        # system call, and a request would make two.
        self.loop = loop
        self.connections: set[Connection] = set()
        self.draining = False
        self._date_second = -1
        self._date = b""
        self.request_id_prefix = f"{config.request_id_header}: ".encode()
        # Request ids are UUID-shaped: a random per-server prefix and a counter (cheaper than
        # uuid4 per request, and as unique).
        r = os.urandom(10).hex()
        self._id_prefix = f"{r[:8]}-{r[8:12]}-4{r[13:16]}-{r[16:20]}-"
        self._ids = itertools.count()

    def request_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids) & 0xFFFFFFFFFFFF:012x}"

    def date_header(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = f"date: {formatdate(now, usegmt=True)}\r\n".encode()
        return self._date


class Connection(asyncio.Protocol):
    __slots__ = (
        "_answering",
        "_body",
        "_body_size",
        "_closed",
        "_done_reading",
        "_drain",
        "_error",
        "_header_bytes",
        "_headers",
        "_headers_done",
        "_in_message",
        "_lingering_since",
        "_paused",
        "_pending_bytes",
        "_queue",
        "_served",
        "_task",
        "_url",
        "_write_paused_at",
        "client",
        "last_activity",
        "message_started",
        "parser",
        "state",
        "transport",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] = ("", 0)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._pending_bytes = 0
        self._headers_done = False
        self._body: list[bytes] = []
        self._body_size = 0
        self._in_message = False
        self._error: SluiceError | None = None
        self._queue: deque[tuple[Request, bool] | SluiceError] = deque()
        self._task: asyncio.Task[None] | None = None  # awaiting an answer or streaming one
        self._answering: tuple[Request, bool] | None = None  # the request being answered
        self._served = 0
        self._closed = False
        self._done_reading = False
        self._paused = False
        self._lingering_since: float | None = None
        self._drain: asyncio.Future[None] | None = None
        self._write_paused_at: float | None = None
        self.last_activity = 0.0
        self.message_started = 0.0

    # -- transport callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        state = self.state
        if len(state.connections) >= state.config.max_connections or state.draining:
            self._closed = True
            exc = Unavailable("the gateway is at its connection limit; retry shortly")
            self._write(error_response(exc, state.config.retry_after), None, keep_alive=False)
            self.transport.close()
            return
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client = (str(peer[0]), int(peer[1]))
        self.last_activity = state.loop.time()
        state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.state.connections.discard(self)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused_at = self.state.loop.time()

    def resume_writing(self) -> None:
        self._write_paused_at = None
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._closed or self._error is not None or self._done_reading:
            return
        if not self._headers_done:
            self._pending_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except _Reject:
            pass
        except httptools.HttpParserUpgrade:
            # Upgrade/CONNECT: we speak neither. The request is served as plain HTTP, then
            # the connection closes (what follows it is not HTTP/1.1).
            self._done_reading = True
            last = self._queue[-1] if self._queue else None
            if isinstance(last, tuple):
                self._queue[-1] = (last[0], False)
            else:
                self._error = BadRequest("CONNECT and protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            # A _Reject raised in on_headers_complete arrives wrapped as a callback error.
            if self._error is None:
                self._error = BadRequest(f"malformed HTTP request: {exc}")
        if self._error is None and not self._headers_done:
            limit = self.state.config.max_header_bytes
            if self._pending_bytes > limit:
                self._error = HeadersTooLarge(f"request headers exceed {limit} bytes")
        if self._error is not None:
            self._queue.append(self._error)
            self._pause()
        elif len(self._queue) > 1:
            self._pause()  # pipelined requests wait their turn; read no more until they are done
        if self._queue and self._answering is None:
            self._serve()

    # -- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self.message_started = self.state.loop.time()
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.state.config.max_url:
            self._reject(UriTooLong(f"request target exceeds {self.state.config.max_url} bytes"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        config = self.state.config
        if self._header_bytes > config.max_header_bytes:
            self._reject(HeadersTooLarge(f"request headers exceed {config.max_header_bytes} bytes"))
        if len(self._headers) >= config.max_headers:
            self._reject(HeadersTooLarge(f"more than {config.max_headers} request headers"))
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._pending_bytes = 0
        te = cl = None
        host = expect = 0
        for name, v in self._headers:
            k = name.lower()
            if k == b"transfer-encoding":
                if te is not None:
                    self._reject(BadRequest("repeated Transfer-Encoding header"))
                te = v
            elif k == b"content-length":
                cl = v
            elif k == b"host":
                host += 1
            elif k == b"expect":
                expect = 1 if v.lower() == b"100-continue" else 2
        version = self.parser.get_http_version()
        # llhttp already refuses CL with TE, repeated or invalid CL, bad chunks and bare LF.
        if te is not None and (te.strip().lower() != b"chunked" or version != "1.1"):
            self._reject(BadRequest(f"unsupported Transfer-Encoding {te!r}"))
        if version == "1.1" and host != 1:
            self._reject(BadRequest("an HTTP/1.1 request needs exactly one Host header"))
        if expect == 2:
            self._reject(ExpectationFailed("only 'Expect: 100-continue' is supported"))
        if cl is not None and int(cl) > self.state.config.max_body:
            self._reject(self._too_large())
        if expect == 1 and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.state.config.max_body:
            self._reject(self._too_large())
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._headers_done = False
        raw = self._url
        path, _, query = raw.partition(b"?")
        request = Request(
            method=self.parser.get_method().decode(),
            path=path.decode("latin-1"),
            query=query.partition(b"#")[0].decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body) if len(self._body) != 1 else self._body[0],
            client=self.client,
            server_port=self.state.port,
            request_id=self.state.request_id(),
            time=time.time(),
            http_version=self.parser.get_http_version(),
        )
        self._body = []
        self._queue.append((request, self.parser.should_keep_alive()))

    # -- handling -------------------------------------------------------------------------

    def _serve(self) -> None:
        """Answer the queued requests in order, until one's answer has to be waited for."""
        while self._queue and not self._closed:
            item = self._queue.popleft()
            if isinstance(item, SluiceError):
                self._write(error_response(item), None, keep_alive=False)
                self._linger()
                return
            request, _ = item
            try:
                answer = self.state.handler(request)
            except Exception as error:
                answer = failure_response(request, error, self.state.config.retry_after)
            self._answering = item
            if not isinstance(answer, Response):
                if asyncio.isfuture(answer):
                    answer.add_done_callback(self._answered)
                else:
                    self._task = self.state.loop.create_task(self._await(answer))
                return
            if not self._respond(answer):
                return
        self.last_activity = self.state.loop.time()
        if self._paused and not self._closed and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def _answered(self, future: asyncio.Future[Response]) -> None:
        # (Also after the client went away: the write is then skipped, the connection closed.)
        assert self._answering is not None
        try:
            response = future.result()
        except BaseException as error:
            response = failure_response(self._answering[0], error, self.state.config.retry_after)
        if self._respond(response):
            self._serve()

    async def _await(self, answer: Awaitable[Response]) -> None:
        try:
            response = await answer
        except Exception as error:
            assert self._answering is not None
            response = failure_response(self._answering[0], error, self.state.config.retry_after)
        self._task = None
        if self._respond(response):
            self._serve()

    def _respond(self, response: Response) -> bool:
        """Write the answer to the request being answered; whether to go on to the next one."""
        if response.stream is not None:
            self._task = self.state.loop.create_task(self._stream(response))
            return False
        request, keep_alive = self._finished()
        self._write(response, request, keep_alive)
        if not keep_alive:
            self._close()
        return keep_alive

    async def _stream(self, response: Response) -> None:
        request, keep_alive = self._finished()
        try:
            keep_alive = await self._write_stream(response, request, keep_alive)
        finally:
            self._task = None
        if not keep_alive:
            self._close()
        else:
            self._serve()

    def _finished(self) -> tuple[Request, bool]:
        """The request answered now, and whether its connection may be kept."""
        assert self._answering is not None
        (request, keep_alive), self._answering = self._answering, None
        self._served += 1
        state = self.state
        keep_alive = (
            keep_alive
            and not state.draining
            and self._served < state.config.max_requests_per_connection
        )
        return request, keep_alive

    def _head(
        self, response: Response, request: Request | None, keep_alive: bool, framing: bytes
    ) -> list[bytes]:
        """Status line and headers; ``framing`` is the content-length/chunked header line."""
        status = response.status
        if response.reason is None:
            line = _STATUS_LINES.get(status) or _status_line(status, None)
        else:
            line = _status_line(status, response.reason)
        parts = [line, self.state.date_header()]
        for k, v in response.headers:
            if b"\n" in k or b"\r" in k or b"\n" in v or b"\r" in v or b":" in k:
                raise ValueError(f"response header {k!r} is malformed")
            parts.append(b"%s: %s\r\n" % (k, v))
        # Even an answer to unparseable bytes carries a request id, for the access log and support.
        rid = request.request_id if request is not None else self.state.request_id()
        parts.append(b"%s%s\r\n" % (self.state.request_id_prefix, rid.encode()))
        if status not in _NO_BODY_STATUS:
            parts.append(framing)
        parts.append(b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
        return parts

    def _write(self, response: Response, request: Request | None, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            parts = self._head(response, request, keep_alive, _length(response.body))
        except (ValueError, UnicodeEncodeError) as exc:
            log.warning("invalid response headers: %s", exc)
            response = json_response(502, {"error": "InvalidResponse", "message": str(exc)})
            parts = self._head(response, request, keep_alive, _length(response.body))
        if response.status not in _NO_BODY_STATUS and (request is None or request.method != "HEAD"):
            parts.append(response.body)
        self.transport.write(b"".join(parts))

    async def _write_stream(self, response: Response, request: Request, keep_alive: bool) -> bool:
        """Stream a body with back-pressure; returns whether the connection may be kept."""
        assert response.stream is not None and self.transport is not None
        has_length = any(k.lower() == b"content-length" for k, _ in response.headers)
        chunked = not has_length and response.status not in _NO_BODY_STATUS
        framing = b"transfer-encoding: chunked\r\n" if chunked else b""
        self.transport.write(b"".join(self._head(response, request, keep_alive, framing)))
        head_only = request.method == "HEAD"
        try:
            async for chunk in response.stream:
                if self._closed:
                    return False
                if not chunk or head_only:
                    continue
                self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                if self._write_paused_at is not None:
                    self._drain = self.state.loop.create_future()
                    await self._drain
        except Exception as exc:
            # Headers are gone already: the only honest signal left is an aborted connection.
            log.warning("streamed response for %s failed: %s", request.request_id, exc)
            self.transport.abort()
            return False
        if chunked and not head_only:
            self.transport.write(b"0\r\n\r\n")
        return keep_alive

    # -- limits and closing ---------------------------------------------------------------

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body exceeds {self.state.config.max_body} bytes")

    def _reject(self, error: SluiceError) -> None:
        self._error = error
        raise _Reject

    def _pause(self) -> None:
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = True
            self.transport.pause_reading()

    def _close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    def _linger(self) -> None:
        """Close after an error without losing the answer: closing a socket with unread input
        makes the kernel send RST, which can destroy the response before the client reads it.
        So: send FIN, read and discard for up to LINGER seconds, then close."""
        transport = self.transport
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            self._close()
            return
        transport.write_eof()
        self._lingering_since = self.state.loop.time()
        self._paused = False
        transport.resume_reading()

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def check(self, now: float) -> None:
        """Called by the sweeper: enforce the request deadline, idle and write-stall limits."""
        config = self.state.config
        if self._closed or self.transport is None:
            return
        if self._lingering_since is not None:
            if now - self._lingering_since > LINGER:
                self.transport.abort()
        elif (
            self._write_paused_at is not None and now - self._write_paused_at > config.write_timeout
        ):
            self.transport.abort()
        elif self._in_message and self._answering is None:
            if now - self.message_started > config.request_deadline:
                self._in_message = False
                self._error = RequestTimeout(
                    f"the request was not received within {config.request_deadline:g} s"
                )
                self._queue.append(self._error)
                self._pause()
                self._serve()
        elif self._answering is None and not self._queue:
            limit = 0.0 if self.state.draining else config.idle_timeout
            if now - self.last_activity >= limit:
                self._close()


class HttpServer:
    """Listens on one address; `close` drains in-flight requests within a grace period."""

    def __init__(self, config: GatewayConfig, handler: Handler) -> None:
        self.config = config
        self.handler = handler
        self._server: asyncio.Server | None = None
        self._state: ServerState | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not listening"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self._state.connections) if self._state else 0

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        state = ServerState(self.config, self.handler, port, loop)
        self._state = state
        self._server = await loop.create_server(
            lambda: Connection(state), host, port, backlog=self.config.backlog, reuse_address=True
        )
        state.port = self.port
        self._sweeper = loop.create_task(self._sweep(state))

    async def _sweep(self, state: ServerState) -> None:
        c = self.config
        interval = max(0.05, min(1.0, c.request_deadline / 4, c.idle_timeout / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for conn in list(state.connections):
                conn.check(now)

    async def close(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` s), then cut the rest."""
        if self._server is None or self._state is None:
            return
        state = self._state
        state.draining = True
        self._server.close()
        now = asyncio.get_running_loop().time()
        for conn in list(state.connections):
            conn.check(now)  # idle connections close at once; busy ones after their response
        deadline = now + grace
        while state.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        leftover = [c.task for c in state.connections if c.task is not None]
        for conn in list(state.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
