"""Reverse proxy to an existing HTTP/1.1 server (an API Gateway HTTP_PROXY integration / an
ALB instance target), with a connect timeout, an integration timeout for the response head and
for each read of the body, and the response body streamed to the client as it arrives.

The target is ``proxy:http://HOST:PORT/BASE``. ``{name}`` in BASE is replaced by the path
parameter of that name (``{proxy}`` for a ``{proxy+}`` route); without any, the request path is
appended to BASE. One upstream connection per request (``Connection: close``).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit

import httptools

from sluice.errors import ValidationError
from sluice.gateway.config import GatewayConfig
from sluice.gateway.errors import BadGateway, IntegrationTimeout
from sluice.gateway.wire import Request, Response

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.-]+)\+?\}")
_READ = 64 * 1024


class _Head:
    """httptools callbacks: collects the status, headers and body chunks of one response."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.head_done = False
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.done = True

    def framed(self) -> bool:
        """Whether the body has a declared end (so an early EOF means it was cut short)."""
        return any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in self.headers)


class ReverseProxy:
    def __init__(self, url: str, timeout: float, config: GatewayConfig) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationError(f"proxy target {url!r}: expected http(s)://HOST[:PORT][/PATH]")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        default = (parts.scheme == "https" and self.port == 443) or self.port == 80
        self.host_header = (self.host if default else f"{self.host}:{self.port}").encode()
        self.base = parts.path.rstrip("/") if not _PLACEHOLDER.search(parts.path) else parts.path
        self.timeout = timeout
        self.connect_timeout = config.proxy_connect_timeout

    def upstream_path(self, request: Request, params: dict[str, str]) -> str:
        if _PLACEHOLDER.search(self.base):
            fill = lambda m: quote(params.get(m.group(1), ""), safe="/")  # noqa: E731
            path = _PLACEHOLDER.sub(fill, self.base)
        else:
            path = self.base + request.path
        return f"{path}?{request.query}" if request.query else path

    def _request_bytes(self, request: Request, params: dict[str, str]) -> bytes:
        lines = [
            f"{request.method} {self.upstream_path(request, params)} HTTP/1.1\r\n".encode(),
            b"host: " + self.host_header + b"\r\n",
        ]
        forwarded_for = request.client[0]
        for name, value in request.headers:
            k = name.lower()
            if k in HOP_BY_HOP or k == b"content-length":
                continue
            if k == b"x-forwarded-for":
                forwarded_for = f"{value.decode('latin-1')}, {forwarded_for}"
                continue
            lines.append(name + b": " + value + b"\r\n")
        lines.append(f"x-forwarded-for: {forwarded_for}\r\n".encode())
        lines.append(b"x-forwarded-proto: http\r\n")
        lines.append(f"x-forwarded-host: {request.header('host') or ''}\r\n".encode("latin-1"))
        lines.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(request.body))
        lines.append(request.body)
        return b"".join(lines)

    async def __call__(self, request: Request, params: dict[str, str]) -> Response:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl)
        except (OSError, TimeoutError) as exc:
            raise BadGateway(f"upstream {self.host}:{self.port} unreachable: {exc!r}") from None
        try:
            writer.write(self._request_bytes(request, params))
            head = _Head()
            parser = httptools.HttpResponseParser(head)
            async with asyncio.timeout(self.timeout):
                while not head.head_done:
                    data = await reader.read(_READ)
                    if not data:
                        raise BadGateway("upstream closed the connection before answering")
                    parser.feed_data(data)
        except TimeoutError:
            writer.close()
            raise IntegrationTimeout(f"upstream did not answer within {self.timeout:g} s") from None
        except (OSError, httptools.HttpParserError) as exc:
            writer.close()
            raise BadGateway(f"upstream error: {exc!r}") from None
        except BaseException:
            writer.close()
            raise
        status = parser.get_status_code()
        headers = [(k, v) for k, v in head.headers if k.lower() not in HOP_BY_HOP]
        bodiless = request.method == "HEAD" or status in (204, 304) or status < 200
        if bodiless:
            writer.close()
            return Response(status, headers, b"")
        return Response(status, headers, stream=self._body(reader, writer, parser, head))

    async def _body(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        parser: httptools.HttpResponseParser,
        head: _Head,
    ) -> AsyncIterator[bytes]:
        try:
            while True:
                if head.chunks:
                    chunks, head.chunks = head.chunks, []
                    for chunk in chunks:
                        yield chunk
                if head.done:
                    return
                async with asyncio.timeout(self.timeout):
                    data = await reader.read(_READ)
                if not data:
                    if head.framed():
                        raise BadGateway("upstream closed the connection mid-body")
                    return  # a body delimited by the end of the connection
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    raise BadGateway(f"upstream sent a malformed body: {exc}") from None
        finally:
            writer.close()
