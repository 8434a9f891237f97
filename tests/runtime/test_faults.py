"""Handlers that misbehave: timeouts, runaway children, memory hogs, crashes; concurrency."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import orjson
import psutil
import pytest

from sluice.errors import Throttled
from sluice.limits.local import LocalLimiter
from tests.runtime.conftest import descendants, started


def test_timeout_kills_and_next_invocation_gets_a_fresh_environment(run) -> None:
    async def body() -> None:
        runtime = await started("faulty.py")
        try:
            t0 = time.monotonic()
            result = await runtime.invoke("spin", b"{}", request_id="r-spin")
            elapsed = time.monotonic() - t0
            pid_before = int(result.logs.split("spinning in ")[1].split()[0])
            again = await runtime.invoke("spin", b"{}")
        finally:
            await runtime.close()
        assert 1.0 <= elapsed < 2.0
        assert result.function_error == "Unhandled"
        assert result.error() == {
            "errorType": "Sandbox.Timedout",
            "errorMessage": "RequestId: r-spin Error: Task timed out after 1.00 seconds",
        }
        assert "r-spin Task timed out after 1.00 seconds\n" in result.logs
        assert result.logs.startswith("START RequestId: r-spin")
        assert "REPORT RequestId: r-spin\tDuration: 1000.00 ms" in result.logs
        assert not psutil.pid_exists(pid_before) or (
            psutil.Process(pid_before).status() == psutil.STATUS_ZOMBIE
        )
        pid_after = int(again.logs.split("spinning in ")[1].split()[0])
        assert pid_after != pid_before and again.cold

    run(body())


def test_timeout_kills_what_the_handler_spawned(run, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"

    async def body() -> None:
        runtime = await started("faulty.py")
        try:
            payload = orjson.dumps({"pidfile": str(pidfile)})
            result = await runtime.invoke("spawn", payload)
            child = int(pidfile.read_text())
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and _running(child):
                await asyncio.sleep(0.02)
            assert not _running(child), "the handler's child died with its process group"
            assert result.error()["errorType"] == "Sandbox.Timedout"  # type: ignore[index]
        finally:
            await runtime.close()

    run(body())


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_memory_hog_is_stopped_with_the_out_of_memory_error(run) -> None:
    async def body() -> None:
        runtime = await started("faulty.py")
        try:
            result = await runtime.invoke("hog", b"{}", request_id="r-hog")
            after = await runtime.invoke("pid", b"{}")
        finally:
            await runtime.close()
        assert result.function_error == "Unhandled"
        assert result.error() == {
            "errorType": "Runtime.OutOfMemory",
            "errorMessage": "RequestId: r-hog Error: Runtime exited with error: signal: killed",
        }
        assert result.max_memory_mb >= 128
        assert "Memory Size: 128 MB\tMax Memory Used: " in result.logs
        assert after.ok

    run(body())


def test_os_exit_is_an_exit_error_and_the_environment_is_replaced(run) -> None:
    async def body() -> None:
        runtime = await started("faulty.py")
        try:
            result = await runtime.invoke("exit3", b"{}", request_id="r-exit")
            assert runtime.status()["exit3"]["warm"] == 0
            again = await runtime.invoke("exit3", b"{}")
        finally:
            await runtime.close()
        assert result.error() == {
            "errorType": "Runtime.ExitError",
            "errorMessage": "RequestId: r-exit Error: Runtime exited with error: exit status 3",
        }
        assert "about to exit\n" in result.logs, "output before the crash is kept"
        assert again.error()["errorType"] == "Runtime.ExitError"  # type: ignore[index]
        assert again.cold

    run(body())


def test_a_corrupted_answer_fails_the_invocation_and_replaces_the_environment(run) -> None:
    """Garbage on the answer pipe (a handler writing to a stray descriptor) cannot be taken for
    an answer: the invocation fails with Lambda's runtime error, the environment is discarded,
    and the next invocation starts a fresh one."""

    async def body() -> None:
        runtime = await started("faulty.py")
        try:
            result = await runtime.invoke("scribble", b"{}", request_id="r-scribble")
            assert runtime.status()["scribble"]["warm"] == 0
            again = await runtime.invoke("scribble", b"{}")
            healthy = await runtime.invoke("pid", b"{}")
        finally:
            await runtime.close()
        assert result.function_error == "Unhandled"
        assert result.error()["errorType"] == "Runtime.ExitError"  # type: ignore[index]
        assert again.cold and again.function_error == "Unhandled"
        assert healthy.ok

    run(body())


def test_environment_killed_from_outside_while_idle_is_replaced(run) -> None:
    async def body() -> None:
        runtime = await started("faulty.py")
        try:
            first = orjson.loads((await runtime.invoke("pid", b"{}")).payload)
            os.kill(first, 9)
            deadline = time.monotonic() + 2
            while runtime.status()["pid"]["warm"] and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            second = await runtime.invoke("pid", b"{}")
        finally:
            await runtime.close()
        assert second.ok and orjson.loads(second.payload) != first and second.cold

    run(body())


def test_reserved_concurrency_throttles_and_caps_environments(run) -> None:
    async def body() -> None:
        limiter = LocalLimiter()
        runtime = await started("faulty.py", limiter=limiter)
        try:
            outcomes = await asyncio.gather(
                *(runtime.invoke("limited", b'{"sleep": 0.4}') for _ in range(5)),
                return_exceptions=True,
            )
            assert runtime.status()["limited"]["warm"] <= 2
            assert await limiter.held("reserved:limited") == 0, "leases are released"
            later = await runtime.invoke("limited", b'{"sleep": 0}')
        finally:
            await runtime.close()
        ok = [o for o in outcomes if not isinstance(o, BaseException)]
        throttled = [o for o in outcomes if isinstance(o, Throttled)]
        assert len(ok) == 2 and len(throttled) == 3
        pids = {orjson.loads(o.payload) for o in ok}
        assert len(pids) == 2
        assert orjson.loads(later.payload) in pids, "a warm one is reused"

    run(body())


def test_idle_environments_are_reaped(run) -> None:
    async def body() -> None:
        runtime = await started("faulty.py")
        try:
            pid = orjson.loads((await runtime.invoke("short_lived", b"{}")).payload)
            assert runtime.status()["short_lived"]["warm"] == 1
            deadline = time.monotonic() + 3
            while runtime.status()["short_lived"]["warm"] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert runtime.status()["short_lived"]["warm"] == 0
            assert not _running(pid)
            again = await runtime.invoke("short_lived", b"{}")
            assert again.cold
        finally:
            await runtime.close()

    run(body())


def test_provisioned_environments_are_warm_from_the_start(run) -> None:
    async def body() -> None:
        runtime = await started("faulty.py")
        try:
            assert runtime.status()["warm"]["warm"] == 2
            first = await runtime.invoke("warm", b"{}")
            await asyncio.sleep(0.4)  # provisioned ones are not reaped
            assert runtime.status()["warm"]["warm"] == 2
        finally:
            await runtime.close()
        assert first.ok and not first.cold and first.init_duration_ms is None
        assert "Init Duration" not in first.logs

    run(body())


def test_close_kills_busy_environments_and_their_children(run, tmp_path: Path) -> None:
    before = descendants()
    pidfile = tmp_path / "child.pid"

    async def body() -> None:
        runtime = await started("faulty.py")
        call = asyncio.ensure_future(
            runtime.invoke("spawn", orjson.dumps({"pidfile": str(pidfile)}))
        )
        while not pidfile.exists() or not pidfile.read_text():
            await asyncio.sleep(0.01)
        await runtime.close()
        result = await call
        assert not result.ok

    run(body())
    assert descendants() - before == set()
    assert not _running(int(pidfile.read_text()))


def test_invoke_before_start_is_refused(run) -> None:
    from sluice.errors import Unavailable
    from sluice.runtime.loader import load_app
    from sluice.runtime.pool import Runtime
    from tests.runtime.conftest import APPS

    app, source = load_app(str(APPS / "faulty.py"))

    async def body() -> None:
        with pytest.raises(Unavailable):
            await Runtime(source.ref, app.functions).invoke("pid", b"{}")

    run(body())
