"""The event loop's CPU per request, without sockets, wrk or a second process:

    .venv/bin/python benchmarks/gateway_loop_cost.py [--requests 200000] [--rounds 5] [--name N]

wrk-driven runs on this 2-vCPU VM move by ±25 % between minutes, which hides any change to the
gateway's own Python smaller than that. Here the server's `Connection` objects are fed whole
requests from in-memory transports (64 clients, each sending its next request once its response
is written), so only the loop thread's work is timed (`time.thread_time`): parsing, routing, the
target, the response. Rows: Sluice's server answering hello world to a GET and to the queue
route's POST (rows (1) and (7) of `gateway_bench`; the first also with the loop looked up on every
use, as the server did before it held it), the gateway's fixed-response route, and its
queue route on a real SQLite broker whose send process is replaced by an in-process stand-in that
answers each frame on the next loop iteration with made-up ids (the loop's side of the hand-over;
nothing is stored; the stand-in's own decoding and answer run on the loop thread too, so that row
is an overestimate), and the same route with each send answered at once. The sync route needs its
environment processes and is not here. The heap is settled first (`settle_heap`), as in the
serving processes. Each row is its median round; rounds alternate the order.
Writes ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest.mock import patch

import orjson
import uvloop
from gateway_app import _hello
from gateway_bench import BODY
from gateway_profile import _answer_at_once, gateway_on
from harness import Report, Result

from sluice.broker.send_process import SendProcess
from sluice.broker.sqlite import SQLiteBroker
from sluice.gateway.config import GatewayConfig
from sluice.gateway.server import Connection, Handler, ServerState
from sluice.platform import settle_heap

GROUP = "event-loop CPU per request, in-memory transports"
CLIENTS = 64
GET = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
POST = (
    b"POST %%s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


class _Client:
    """A connection's transport: counts the responses written to it."""

    def __init__(self) -> None:
        self.responses = 0

    def write(self, data: bytes) -> None:
        self.responses += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _ChildStandIn:
    """The send process's stdin: answers each frame on the next loop iteration, storing nothing."""

    def __init__(self, process: SendProcess) -> None:
        self._process = process
        self._next_id = 0

    def write(self, frame: bytes) -> None:
        _, queues = orjson.loads(frame[4:])
        answers = []
        for _, sends in queues:
            for messages in sends:
                answers.append([f"id-{self._next_id + i}" for i in range(len(messages))])
                self._next_id += len(messages)
        asyncio.get_running_loop().call_soon(self._process._received, orjson.dumps(answers))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


class _LoopLookedUp:
    """Diagnostic: the server's loop looked up on every use, as the server did before it held it
    (`asyncio.get_running_loop()` is a getpid() system call on CPython 3.11). Each use costs one
    Python call more than the code did then. The per-request path uses only `time`."""

    def time(self) -> float:
        return asyncio.get_running_loop().time()

    def create_task(self, coro: Any) -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(coro)

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()


async def loop_cpu(
    handler: Handler, request: bytes, requests: int, *, look_up_loop: bool = False
) -> float:
    """Loop-thread CPU µs per request answered, ``CLIENTS`` clients in turn."""
    loop: Any = _LoopLookedUp() if look_up_loop else asyncio.get_running_loop()
    state = ServerState(GatewayConfig(access_log=False), handler, 8080, loop)
    clients = []
    for _ in range(CLIENTS):
        connection, transport = Connection(state), _Client()
        connection.connection_made(transport)  # type: ignore[arg-type]
        clients.append((connection, transport, [0]))

    async def serve(count: int) -> None:
        answered = 0
        while answered < count:
            for connection, transport, sent in clients:
                if transport.responses == sent[0]:  # its last response is out: the next request
                    answered += sent[0] > 0
                    sent[0] += 1
                    connection.data_received(request)
            await asyncio.sleep(0)

    await serve(requests // 20)  # warm-up
    started = time.thread_time()
    await serve(requests)
    return (time.thread_time() - started) / requests * 1e6


async def measure(workdir: Path, requests: int, rounds: int) -> list[Result]:
    broker = SQLiteBroker(workdir / "broker.db", send_process=True)
    await broker.start()
    gateway = await gateway_on(broker)
    process = broker._send_process
    assert process is not None
    real_stdin, process._stdin = process._stdin, _ChildStandIn(process)  # type: ignore[assignment]
    unused = SQLiteBroker(workdir / "unused.db")
    await unused.start()
    with patch.object(SQLiteBroker, "send_soon", _answer_at_once):
        at_once = await gateway_on(unused)
    rows: list[tuple[str, Handler, bytes, bool]] = [
        ("Sluice HttpServer, hello world, GET (1)", _hello, GET % b"/", False),
        (
            "diagnostic: the same, the loop looked up on every use (as before the server held it)",
            _hello,
            GET % b"/",
            True,
        ),
        ("Sluice HttpServer, hello world, the queue route's POST (7)", _hello, POST % b"/", False),
        ("gateway, FixedResponse route", gateway.handle, GET % b"/fixed", False),
        (
            "gateway, queue route, send answered by an in-process stand-in",
            gateway.handle,
            POST % b"/enqueue",
            False,
        ),
        ("gateway, queue route, send answered at once", at_once.handle, POST % b"/enqueue", False),
    ]
    measured: dict[str, list[float]] = {name: [] for name, *_ in rows}
    settle_heap()  # as the serving processes do: without it young collections add 1-2 µs/req
    try:
        for round_no in range(rounds):
            for name, handler, request, look_up in rows if round_no % 2 == 0 else rows[::-1]:
                measured[name].append(
                    await loop_cpu(handler, request, requests, look_up_loop=look_up)
                )
    finally:
        process._stdin = real_stdin
        for server in (gateway, at_once):
            await server.shutdown(1)
        for b in (broker, unused):
            await b.close()
    return [
        Result(
            GROUP,
            name,
            "loop µs/req",
            round(statistics.median(values), 2),
            extra={"rounds µs/req": " / ".join(f"{v:.2f}" for v in values)},
            settings={"clients": CLIENTS, "requests per round": requests},
        )
        for name, values in measured.items()
    ]


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="The event loop's CPU per gateway request.")
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--name", default="gateway_loop_cost", help="results/<name>.{json,md}")
    args = parser.parse_args(argv)
    report = Report(args.name)
    with tempfile.TemporaryDirectory() as tmp:
        for result in uvloop.run(measure(Path(tmp), args.requests, args.rounds)):
            report.add(result)
    report.notes.append(
        "CPU time of the loop thread only; the ratio column is cost relative to the hello world "
        "(higher is more). In-memory transports: no system calls for the client sockets, so "
        "the figures are below what the loop spends under wrk (gateway_profile)."
    )
    report.finish()


if __name__ == "__main__":
    main(sys.argv[1:])
