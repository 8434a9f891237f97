"""HTTP peers: bare hello-world servers and FastAPI apps, each one worker process.

:func:`server_argv` gives the command line that serves one of :data:`SERVERS` on a port;
the harness runs it as a subprocess with ``benchmarks/`` on ``PYTHONPATH``. The bare apps
live here; the FastAPI ones in ``peers.fastapi_apps`` so a bare server never pays for
importing FastAPI or Celery (its memory is measured too).

    python -m peers.http_servers httptools --port 8001 --loop uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import httptools
import uvloop

HELLO = b"Hello, world!"
_HEADERS = b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(HELLO)
_OK_KEEP_ALIVE = b"HTTP/1.1 200 OK\r\n" + _HEADERS + b"\r\n" + HELLO
_OK_CLOSE = b"HTTP/1.1 200 OK\r\n" + _HEADERS + b"Connection: close\r\n\r\n" + HELLO
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


# -- apps --------------------------------------------------------------------------------


class HelloRSGI:
    """Granian's native RSGI interface: the response is written without an ASGI dict."""

    async def __call__(self, scope: Any, protocol: Any) -> None:
        protocol.response_bytes(200, [("content-type", "text/plain")], HELLO)


def make_hello_rsgi() -> HelloRSGI:
    return HelloRSGI()


async def _hello_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": HELLO})


def make_hello_asgi() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    return _hello_asgi


class HelloProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive hello world straight on an event loop with httptools."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._transport.write(_BAD_REQUEST)
            self._transport.close()

    # httptools callback, called once per complete request (pipelining included).
    def on_message_complete(self) -> None:
        assert self._transport is not None
        if self._parser.should_keep_alive():
            self._transport.write(_OK_KEEP_ALIVE)
        else:
            self._transport.write(_OK_CLOSE)
            self._transport.close()


async def serve_httptools(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HelloProtocol, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


# -- command lines -----------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    kind: str
    description: str
    path: str
    """The URL path wrk should load."""


SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec("granian-rsgi", "Granian, RSGI hello world", "/"),
    ServerSpec("uvicorn-asgi", "Uvicorn + httptools + uvloop, raw ASGI hello world", "/"),
    ServerSpec("httptools-uvloop", "asyncio Protocol + httptools on uvloop", "/"),
    ServerSpec("httptools-asyncio", "asyncio Protocol + httptools on stdlib asyncio", "/"),
    ServerSpec("fastapi-hello", "FastAPI hello world on Uvicorn (httptools, uvloop)", "/"),
    ServerSpec(
        "fastapi-celery",
        "FastAPI GET /enqueue calling Celery .delay() (sync def, threadpool), Uvicorn",
        "/enqueue",
    ),
)


def server_spec(kind: str) -> ServerSpec:
    for spec in SERVERS:
        if spec.kind == kind:
            return spec
    raise KeyError(f"unknown server kind {kind!r}; known: {[s.kind for s in SERVERS]}")


def _uvicorn(target: str, host: str, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        target,
        f"--host={host}",
        f"--port={port}",
        "--http=httptools",
        "--loop=uvloop",
        "--no-access-log",
        "--log-level=warning",
        *extra,
    ]


def server_argv(kind: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The command that serves ``kind`` on ``host:port`` with one worker process."""
    server_spec(kind)
    if kind == "granian-rsgi":
        return [
            sys.executable,
            "-m",
            "granian",
            "--interface=rsgi",
            "--factory",
            f"--host={host}",
            f"--port={port}",
            "--workers=1",
            "--no-ws",
            "--log-level=warning",
            "peers.http_servers:make_hello_rsgi",
        ]
    if kind == "uvicorn-asgi":
        return _uvicorn("peers.http_servers:make_hello_asgi", host, port, "--lifespan=off")
    if kind.startswith("httptools-"):
        loop = kind.removeprefix("httptools-")
        return [sys.executable, "-m", "peers.http_servers", f"--port={port}", f"--loop={loop}"]
    if kind == "fastapi-hello":
        return _uvicorn("peers.fastapi_apps:make_hello", host, port)
    return _uvicorn("peers.fastapi_apps:make_celery_enqueue", host, port)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="asyncio + httptools hello world server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        uvloop.run(serve_httptools(args.host, args.port))
    else:
        asyncio.run(serve_httptools(args.host, args.port))


if __name__ == "__main__":
    main(sys.argv[1:])
