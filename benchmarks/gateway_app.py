"""The app `gateway_bench` serves, and the gateway server's bare hello world.

Served with ``sluice gateway benchmarks/gateway_app.py`` (gateway + runtime, no dispatcher, so
queued messages stay put). ``python gateway_app.py hello --port N`` runs Sluice's `HttpServer`
with a handler answering a fixed 200, which is row (1): the chosen server's bare hello world.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
from collections.abc import Sequence
from typing import Any

import uvloop

from sluice.app import App, FixedResponse
from sluice.gateway.config import GatewayConfig
from sluice.gateway.server import HttpServer
from sluice.gateway.wire import Request, Response

HELLO = b"Hello, world!"
QUEUE = "bench"

app = App("gatewaybench")
app.queue(QUEUE)
# GET variants too: wrk without a script sends GET; the queue body is then the empty string.
app.add_route("POST /enqueue", f"queue:{QUEUE}")
app.add_route("GET /enqueue", f"queue:{QUEUE}")
# Routing and response without a backend: what the gateway itself costs over the bare server.
app.add_route("GET /fixed", FixedResponse(200, HELLO.decode()))


@app.route("GET /noop")
def noop(event: dict[str, Any], context: object) -> dict[str, Any]:
    return {"statusCode": 200, "body": "ok"}


@app.route("POST /jobs", to="async")
@app.route("GET /jobs", to="async")
def job(event: dict[str, Any], context: object) -> None:
    return None


def raise_nofile() -> None:
    """10,000 client connections need as many descriptors as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _hello(request: Request) -> Response:
    # A plain function: the server's cheapest handler (answered without a task).
    return Response(200, [(b"content-type", b"text/plain")], HELLO)


async def serve_hello(port: int) -> None:
    server = HttpServer(GatewayConfig(access_log=False), _hello)
    await server.start("127.0.0.1", port)
    await asyncio.Event().wait()


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="Sluice's HTTP server, answering hello world.")
    parser.add_argument("mode", choices=["hello"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    raise_nofile()
    uvloop.run(serve_hello(args.port))


if __name__ == "__main__":
    main(sys.argv[1:])
