"""Where a durable queue request's CPU goes: the server, the gateway, the broker's two threads.

    .venv/bin/python benchmarks/gateway_profile.py [--duration 4] [--connections 64]

Serves, in this process (so each thread's CPU time can be read), Sluice's `HttpServer` with a
hello-world handler, then the gateway of ``gateway_app`` on a real SQLite broker, and loads each
path with wrk. For every path: requests/s, and CPU microseconds per request of the event-loop
thread and of the whole process (the difference is the SQLite writer thread). Then, as
diagnostics, the queue route with parts of its durable path taken out (`diagnostic`). Writes
``benchmarks/results/gateway_profile.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from queue import SimpleQueue
from typing import Any
from unittest.mock import patch

import psutil
import uvloop
from gateway_app import _hello, app, raise_nofile
from gateway_bench import post_script, run_wrk
from harness import LOG_DIR, Report, Result, WrkOptions, console

from sluice.broker.contract import SendResult
from sluice.broker.groupcommit import GroupCommitWriter
from sluice.broker.sqlite import SQLiteBroker, _prepare_standard
from sluice.dispatch.async_invoke import async_queue_configs, submit_async
from sluice.gateway import Gateway, GatewayConfig
from sluice.gateway.server import HttpServer
from sluice.runtime.loader import load_app
from sluice.runtime.pool import Runtime

APP_FILE = Path(__file__).resolve().parent / "gateway_app.py"

GROUP = "CPU per request, server in this process"
DIAGNOSTICS = (
    ("no-insert", "writer thread checks the sends, inserts nothing"),
    ("thread-only", "a thread resolves the sends, no SQLite"),
    ("loop-only", "the loop resolves the sends, no thread, no SQLite"),
    ("no-send", "the broker's send returns at once, nothing stored"),
)


def _children_cpu() -> dict[int, float]:
    """CPU seconds so far of each process below this one (the runtime's environments)."""
    cpu = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            cpu[child.pid] = times.user + times.system
    return cpu


def _idle_seconds() -> float:
    """Idle time of all CPUs so far (the ``cpu`` line of /proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")  # idle + iowait


@contextlib.contextmanager
def diagnostic(mode: str) -> Iterator[None]:
    """Take parts out of the durable path to see what each costs (never Sluice as shipped):
    "no-insert": the writer thread runs, checks the sends and commits nothing; "thread-only": a
    bare thread resolves each group's futures (no SQLite); "loop-only": the event loop resolves
    them itself (no thread, nothing stored); "no-send": the broker's send returns at once."""
    if mode == "no-send":

        async def sent(self: SQLiteBroker, queue: str, messages: Any) -> list[SendResult]:
            return [SendResult("id", "md5")]

        with patch.object(SQLiteBroker, "send", sent):
            yield
        return
    if mode == "no-insert":
        original = SQLiteBroker._send_standard_alone

        def prepared_only(self: SQLiteBroker, conn: Any, sends: list[Any]) -> Any:
            queue = self._queues.get(sends[0].queue)
            return (
                original(self, conn, sends) if queue is None else _prepare_standard(queue, sends)[1]
            )

        with patch.object(SQLiteBroker, "_send_standard_alone", prepared_only):
            yield
        return
    pending: list[asyncio.Future[Any]] = []
    handed: SimpleQueue[tuple[asyncio.AbstractEventLoop, list[Any]]] = SimpleQueue()

    def settle(futures: list[asyncio.Future[Any]]) -> None:
        for future in futures:
            if not future.done():
                future.set_result([SendResult("id", "md5")])

    def resolver() -> None:
        while True:
            loop, futures = handed.get()
            loop.call_soon_threadsafe(settle, futures)

    def flush(loop: asyncio.AbstractEventLoop) -> None:
        futures = pending[:]
        pending.clear()
        if mode == "loop-only":
            settle(futures)
        else:
            handed.put((loop, futures))

    async def submit_batched(self: Any, key: Any, fn: Any, item: Any, **_: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not pending:
            loop.call_soon(flush, loop)
        pending.append(future)
        return await future

    threading.Thread(target=resolver, daemon=True).start()
    with patch.object(GroupCommitWriter, "submit_batched", submit_batched):
        yield


async def measure(
    name: str, port: int, path: str, options: WrkOptions, script: Path | None
) -> Result:
    url = f"http://127.0.0.1:{port}{path}"
    await asyncio.to_thread(run_wrk, url, WrkOptions(1, options.connections), script)  # warm-up
    main0, proc0, idle0 = time.thread_time(), time.process_time(), _idle_seconds()
    children0 = _children_cpu()
    result = await asyncio.to_thread(run_wrk, url, options, script)
    # The wrk-waiting helper thread is idle, so process - loop = the broker's writer thread.
    main_cpu, proc_cpu = time.thread_time() - main0, time.process_time() - proc0
    idle = (_idle_seconds() - idle0) / (options.duration * (os.cpu_count() or 1))
    children = _children_cpu()
    envs_cpu = sum(cpu - children0.get(pid, 0.0) for pid, cpu in children.items())
    n = max(1, result.requests)
    return Result(
        GROUP,
        name,
        "req/s",
        result.requests_per_s,
        extra={
            "loop thread µs/req": round(main_cpu / n * 1e6, 1),
            "process µs/req": round(proc_cpu / n * 1e6, 1),
            "process CPU %": round(proc_cpu / options.duration * 100),
            "machine idle %": round(idle * 100),
            "environments µs/req": round(envs_cpu / n * 1e6, 1),
            "p50 ms": round(result.p50_ms, 3),
            "errors": result.errors,
        },
        settings=options.settings(),
    )


async def profile(options: WrkOptions, workdir: Path) -> list[Result]:
    script = post_script(workdir)
    results = []
    hello = HttpServer(GatewayConfig(access_log=False), _hello)
    await hello.start("127.0.0.1", 0)
    results.append(await measure("Sluice HttpServer, hello world", hello.port, "/", options, None))
    await hello.close(1)
    broker = SQLiteBroker(workdir / "broker.db")
    await broker.start()
    for queue in app.queues.values():
        await broker.create_queue(queue)
    for internal in async_queue_configs(app.functions.values()):
        await broker.create_queue(internal)
    submit: Callable[[str, bytes], Awaitable[str]] = functools.partial(submit_async, broker)
    _, source = load_app(str(APP_FILE))
    runtime = Runtime(source.ref, app.functions)
    await runtime.start()
    gateway = Gateway(app, broker, runtime, submit, GatewayConfig(access_log=False))
    await gateway.serve("127.0.0.1", 0)
    try:
        for name, path, post in [
            ("gateway, FixedResponse route (no backend)", "/fixed", False),
            ("gateway + runtime, sync route -> no-op function", "/noop", False),
            ("gateway, queue route, durable 202 (POST JSON)", "/enqueue", True),
            ("gateway, async route, durable 202 (POST JSON)", "/jobs", True),
        ]:
            console().log(f"gateway profile: {name}")
            results.append(
                await measure(name, gateway.port, path, options, script if post else None)
            )
        for mode, what in DIAGNOSTICS:
            console().log(f"gateway profile: queue route, {mode}")
            with diagnostic(mode):
                name = f"diagnostic: queue route, {what}"
                results.append(await measure(name, gateway.port, "/enqueue", options, script))
    finally:
        await gateway.shutdown(1)
        await runtime.close()
        await broker.close()
    return results


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="CPU per request of the gateway's paths.")
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--name", default="gateway_profile")
    args = parser.parse_args(argv)
    raise_nofile()
    report = Report(args.name)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=LOG_DIR, prefix="gateway-profile-") as tmp:
        options = WrkOptions(args.duration, args.connections)
        for result in uvloop.run(profile(options, Path(tmp))):
            report.add(result)
    report.notes.append(
        "CPU times are thread_time() of the event-loop thread and process_time() of the whole "
        "process over the measured wrk run; wrk itself runs in its own process. 'machine idle' "
        "is the idle share of all CPUs (/proc/stat) during the run."
    )
    report.notes.append(
        "Diagnostic rows take parts out of the durable path (nothing is stored in the last two): "
        "what each part costs, not what Sluice does."
    )
    report.write()
    print(report.markdown())


if __name__ == "__main__":
    main(sys.argv[1:])
