"""Where a gateway request's CPU goes: the server, the gateway, the broker, the environments.

    .venv/bin/python benchmarks/gateway_profile.py [--duration 4] [--connections 64]

Serves, in this process (so each thread's CPU time can be read), Sluice's `HttpServer` with a
hello-world handler, then the gateway of ``gateway_app`` on a real SQLite broker whose sends a
send process commits (as the gateway role runs it), and loads each path with wrk. For every path:
requests/s, CPU microseconds per request of the event-loop thread, of this whole process and of
its children (the environments, the send process). Side by side: the queue route with its sends
committed by a writer thread in this process (how it was before the send process), and three
diagnostics that store nothing: the send answered at once; a send process that answers without
committing (`send_echo.py`); and that send process fed as usual while each request is answered
at once (the hand-over's traffic without the wait). Writes
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
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from unittest.mock import patch

import psutil
import uvloop
from gateway_app import _hello, app, raise_nofile
from gateway_bench import median_round, post_script, run_wrk
from harness import LOG_DIR, Report, Result, WrkOptions, console

from sluice.broker.contract import SendResult
from sluice.broker.send_process import SendProcess
from sluice.broker.sqlite import SQLiteBroker
from sluice.dispatch.async_invoke import async_queue_configs, submit_async
from sluice.gateway import Gateway, GatewayConfig
from sluice.gateway.server import HttpServer
from sluice.runtime.loader import load_app
from sluice.runtime.pool import Runtime

APP_FILE = Path(__file__).resolve().parent / "gateway_app.py"
ECHO_CHILD = Path(__file__).resolve().parent / "send_echo.py"

GROUP = "CPU per request, server in this process"


def _children_cpu() -> dict[int, float]:
    """CPU seconds so far of each process below this one (environments, the send process)."""
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


def _answer_at_once(
    self: SQLiteBroker, queue: str, messages: Sequence[Any], done: Callable[[Any], None]
) -> None:
    """Diagnostic only: a send answered at once, nothing stored."""
    done([SendResult("id", "md5") for _ in messages])


def _hand_over_and_answer_at_once(
    self: SQLiteBroker, queue: str, messages: Sequence[Any], done: Callable[[Any], None]
) -> None:
    """Diagnostic only: the send goes to the send process as usual (frames written, answers
    read), but the request is answered at once, without waiting for the child's answer."""
    assert self._send_process is not None
    self._send_process.submit(queue, messages, _ignore)
    done([SendResult("id", "md5") for _ in messages])


def _ignore(outcome: Any) -> None:
    pass


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
            "children µs/req": round(envs_cpu / n * 1e6, 1),
            "p50 ms": round(result.p50_ms, 3),
            "errors": result.errors,
        },
        settings=options.settings(),
    )


async def gateway_on(broker: SQLiteBroker, runtime: Runtime | None = None) -> Gateway:
    for queue in app.queues.values():
        await broker.create_queue(queue)
    for internal in async_queue_configs(app.functions.values()):
        await broker.create_queue(internal)
    submit: Callable[[str, bytes], Awaitable[str]] = functools.partial(submit_async, broker)
    gateway = Gateway(app, broker, runtime or NoInvoker(), submit, GatewayConfig(access_log=False))
    await gateway.serve("127.0.0.1", 0)
    return gateway


class NoInvoker:
    async def invoke(self, function: str, payload: bytes, **_: Any) -> Any:
        raise AssertionError("this gateway serves no synchronous route")


async def profile(options: WrkOptions, workdir: Path, rounds: int) -> list[Result]:
    """Every row once per round (in reverse order every other round, so that no row always
    follows the same one); per row, its median round."""
    script = post_script(workdir)
    hello = HttpServer(GatewayConfig(access_log=False), _hello)
    await hello.start("127.0.0.1", 0)
    # As the gateway role runs it: sends committed by the broker's send process.
    broker = SQLiteBroker(workdir / "broker.db", send_process=True)
    await broker.start()
    _, source = load_app(str(APP_FILE))
    runtime = Runtime(source.ref, app.functions)
    await runtime.start()
    gateway = await gateway_on(broker, runtime)
    # For comparison, the same route with sends committed by a writer thread in this process.
    threaded = SQLiteBroker(workdir / "threaded.db")
    await threaded.start()
    thread_gateway = await gateway_on(threaded)
    unused = SQLiteBroker(workdir / "unused.db")
    await unused.start()
    with patch.object(SQLiteBroker, "send_soon", _answer_at_once):
        diagnostic = await gateway_on(unused)
    # The send process's pipes and frames with a child that stores nothing: the hand-over alone.
    echo = SQLiteBroker(workdir / "echo.db", send_process=True)
    with patch.object(SendProcess, "child_command", (sys.executable, str(ECHO_CHILD))):
        await echo.start()
        echo_gateway = await gateway_on(echo)
        # The same traffic to the child, but no request waits for its answer.
        unwaited = SQLiteBroker(workdir / "unwaited.db", send_process=True)
        await unwaited.start()
        with patch.object(SQLiteBroker, "send_soon", _hand_over_and_answer_at_once):
            unwaited_gateway = await gateway_on(unwaited)
    rows = [
        ("Sluice HttpServer, hello world", hello.port, "/", False),
        ("gateway, FixedResponse route (no backend)", gateway.port, "/fixed", False),
        ("gateway + runtime, sync route -> no-op function", gateway.port, "/noop", False),
        ("gateway, queue route, durable 202 (POST JSON)", gateway.port, "/enqueue", True),
        ("gateway, async route, durable 202 (POST JSON)", gateway.port, "/jobs", True),
        (
            "the same queue route, sends committed by a writer thread in this process",
            thread_gateway.port,
            "/enqueue",
            True,
        ),
        (
            "diagnostic: queue route, the send answered at once, nothing stored",
            diagnostic.port,
            "/enqueue",
            True,
        ),
        (
            "diagnostic: queue route, a send process that answers at once, nothing stored",
            echo_gateway.port,
            "/enqueue",
            True,
        ),
        (
            "diagnostic: the same, but each request answered without waiting for the child",
            unwaited_gateway.port,
            "/enqueue",
            True,
        ),
    ]
    try:
        return await in_rounds(rows, options, script, rounds, "gateway profile")
    finally:
        for server in (gateway, thread_gateway, diagnostic, echo_gateway, unwaited_gateway):
            await server.shutdown(1)
        await hello.close(1)
        await runtime.close()
        for b in (broker, threaded, unused, echo, unwaited):
            await b.close()


# A row: its name, the port and path to load, and whether to POST the JSON body.
Row = tuple[str, int, str, bool]


async def in_rounds(
    rows: Sequence[Row], options: WrkOptions, script: Path, rounds: int, label: str
) -> list[Result]:
    """Every row once per round (in reverse order every other round, so that no row always
    follows the same one); per row, its median round."""
    measured: dict[str, list[Result]] = {name: [] for name, *_ in rows}
    for round_no in range(rounds):
        for name, port, path, post in rows if round_no % 2 == 0 else rows[::-1]:
            console().log(f"{label}, round {round_no + 1}: {name}")
            result = await measure(name, port, path, options, script if post else None)
            measured[name].append(result)
    return [median_round(results) for results in measured.values()]


Measurements = Callable[[WrkOptions, Path, int], Awaitable[list[Result]]]


def measured(measurements: Measurements, options: WrkOptions, rounds: int, name: str) -> Report:
    """A report of what ``measurements`` (served in this process, on uvloop) found, run in a
    fresh directory under ``LOG_DIR`` with the descriptor limit raised for wrk's connections."""
    raise_nofile()
    report = Report(name)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=LOG_DIR, prefix=f"{name}-") as tmp:
        for result in uvloop.run(measurements(options, Path(tmp), rounds)):
            report.add(result)
    return report


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="CPU per request of the gateway's paths.")
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--name", default="gateway_profile")
    args = parser.parse_args(argv)
    options = WrkOptions(args.duration, args.connections)
    report = measured(profile, options, args.rounds, args.name)
    report.notes.append(
        "CPU times are thread_time() of the event-loop thread and process_time() of the whole "
        "process over the measured wrk run; wrk itself runs in its own process. 'machine idle' "
        "is the idle share of all CPUs (/proc/stat) during the run."
    )
    report.notes.append(
        f"Each row is the median of {args.rounds} rounds (all rows once per round, the order "
        "reversed every other round; every round's figure beside it): the machine's speed "
        "drifts by ±25 % within minutes, so compare rows, not runs."
    )
    report.notes.append(
        "The diagnostic rows store nothing: one's broker answers each send at once (what the "
        "gateway's queue path costs without the durable send), the other's send process is "
        "benchmarks/send_echo.py, which answers every frame as soon as it reads it (what handing "
        "the sends to a child and reading its answers costs, without committing them); the last "
        "sends the same frames to that child but answers each request at once (the traffic to "
        "the child without the wait for it). None is what Sluice does."
    )
    report.finish()


if __name__ == "__main__":
    main(sys.argv[1:])
