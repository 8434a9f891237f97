"""A request as the server parsed it and a response as the server will write it.

Deliberately plain: the gateway turns these into AWS-shaped events (`sluice.events.http`) only
for the targets that need them, so health checks and queue sends skip that work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson

from sluice.errors import SluiceError

JSON = b"application/json"


@dataclass(slots=True)
class Request:
    method: str
    path: str  # raw (percent-encoded) path, without the query string
    query: str  # raw query string, without '?'
    headers: list[tuple[bytes, bytes]]  # as received: order, repeats and name case kept
    body: bytes
    client: tuple[str, int]
    server_port: int
    request_id: str
    time: float  # seconds since the epoch when the first byte arrived
    http_version: str = "1.1"
    _first: dict[str, str] | None = field(default=None, repr=False)

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (lower case); repeated headers joined by commas."""
        return self.header_map().get(name)

    def header_map(self) -> dict[str, str]:
        """Lower-cased names to values, repeats joined by commas (built once, on demand)."""
        if self._first is None:
            joined: dict[str, str] = {}
            for raw_k, raw_v in self.headers:
                k, v = raw_k.decode("latin-1").lower(), raw_v.decode("latin-1")
                joined[k] = f"{joined[k]},{v}" if k in joined else v
            self._first = joined
        return self._first

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (lower case), in arrival order."""
        wanted = name.encode("latin-1")
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == wanted]

    @property
    def host(self) -> str:
        host = self.header("host") or ""
        # Strip a port, keeping IPv6 literals ("[::1]:8080") whole.
        if host.startswith("["):
            return host[: host.find("]") + 1]
        return host.rsplit(":", 1)[0] if ":" in host else host


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    reason: str | None = None  # a custom reason phrase; None = the standard one
    # When set the body is streamed (chunked unless the headers give a Content-Length).
    stream: AsyncIterator[bytes] | None = None


def json_response(
    status: int, payload: object, headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    return Response(status, [(b"content-type", JSON), *(headers or [])], orjson.dumps(payload))


def error_response(exc: SluiceError, retry_after: float | None = None) -> Response:
    """A `SluiceError` as a JSON body naming the problem, with Retry-After when it applies."""
    headers: list[tuple[bytes, bytes]] = []
    wait = exc.retry_after if exc.retry_after is not None else retry_after
    if wait is not None and exc.status in (429, 503):
        headers.append((b"retry-after", b"%d" % max(1, round(wait))))
    return json_response(exc.status, exc.to_dict(), headers)
