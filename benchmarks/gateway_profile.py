"""Where a durable queue request's CPU goes: the server, the gateway, the broker's two threads.

    .venv/bin/python benchmarks/gateway_profile.py [--duration 4] [--connections 64]

Serves, in this process (so each thread's CPU time can be read), Sluice's `HttpServer` with a
hello-world handler, then the gateway of ``gateway_app`` on a real SQLite broker, and loads each
path with wrk. For every path: requests/s, and CPU microseconds per request of the event-loop
thread and of the whole process (the difference is the SQLite writer thread). Writes
``benchmarks/results/gateway_profile.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import uvloop
from gateway_app import _hello, app, raise_nofile
from gateway_bench import post_script, run_wrk
from harness import LOG_DIR, Report, Result, WrkOptions, console

from sluice.broker.sqlite import SQLiteBroker
from sluice.dispatch.async_invoke import async_queue_configs, submit_async
from sluice.gateway import Gateway, GatewayConfig
from sluice.gateway.server import HttpServer

GROUP = "CPU per request, server in this process"


async def measure(
    name: str, port: int, path: str, options: WrkOptions, script: Path | None
) -> Result:
    url = f"http://127.0.0.1:{port}{path}"
    await asyncio.to_thread(run_wrk, url, WrkOptions(1, options.connections), script)  # warm-up
    main0, proc0 = time.thread_time(), time.process_time()
    result = await asyncio.to_thread(run_wrk, url, options, script)
    # The wrk-waiting helper thread is idle, so process - loop = the broker's writer thread.
    main_cpu, proc_cpu = time.thread_time() - main0, time.process_time() - proc0
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
    gateway = Gateway(app, broker, NoInvoker(), submit, GatewayConfig(access_log=False))
    await gateway.serve("127.0.0.1", 0)
    try:
        for name, path, post in [
            ("gateway, FixedResponse route (no backend)", "/fixed", False),
            ("gateway, queue route, durable 202 (POST JSON)", "/enqueue", True),
            ("gateway, async route, durable 202 (POST JSON)", "/jobs", True),
        ]:
            console().log(f"gateway profile: {name}")
            results.append(
                await measure(name, gateway.port, path, options, script if post else None)
            )
    finally:
        await gateway.shutdown(1)
        await broker.close()
    return results


class NoInvoker:
    """The profiled routes invoke no function synchronously."""

    async def invoke(self, function: str, payload: bytes, **_: object) -> object:
        raise AssertionError(f"unexpected synchronous invoke of {function}")


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
        "process over the measured wrk run; wrk itself runs in its own process."
    )
    report.write()
    print(report.markdown())


if __name__ == "__main__":
    main(sys.argv[1:])
