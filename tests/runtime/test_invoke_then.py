"""`Runtime.invoke_then`: the gateway's sync routes start invocations without a coroutine. On a
warm environment its answer calls ``done``; otherwise `invoke` runs as a task. What happens to the
environment when the caller abandons the result, or when the environment dies. (`_soon` wraps
it in a future, as a caller that awaits would.)"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import orjson

from sluice.errors import Throttled
from sluice.futures import settle_with
from sluice.runtime.contract import InvocationResult
from sluice.runtime.pool import Runtime
from tests.runtime.conftest import running


def _soon(runtime: Runtime, function: str, payload: bytes) -> asyncio.Future[InvocationResult]:
    """`invoke_then` with a future settled by its ``done``."""
    result: asyncio.Future[InvocationResult] = asyncio.get_running_loop().create_future()
    runtime.invoke_then(function, payload, partial(settle_with, result))
    return result


def test_warm_invocations_settle_without_a_task_and_reuse_the_environment(run) -> None:
    async def body() -> None:
        async with running("faulty.py") as runtime:
            cold = _soon(runtime, "moody", b"{}")
            assert len(runtime._settling) == 1  # no warm environment: `invoke` as a task
            first = await cold
            told: list[Any] = []
            runtime.invoke_then("moody", b"{}", told.append, request_id="r-warm")
            assert not runtime._settling  # a warm one: no task; its answer will tell
            assert not told  # never before invoke_then returns
            while not told:
                await asyncio.sleep(0.005)
            [warm] = told
        assert first.cold and not warm.cold
        assert warm.request_id == "r-warm" and warm.payload == first.payload  # same process

    run(body())


def test_an_abandoned_invocation_finishes_and_its_environment_is_used_again(run) -> None:
    async def body() -> None:
        async with running("faulty.py") as runtime:
            pid = orjson.loads((await runtime.invoke("moody", b"{}")).payload)
            slow = _soon(runtime, "moody", orjson.dumps({"sleep": 0.3}))
            assert runtime.status()["moody"]["busy"] == 1
            slow.cancel()  # the caller gave up (an integration timeout)
            for _ in range(500):  # up to 10 s: the invocation runs on to its end
                if runtime.status()["moody"]["busy"] == 0:
                    break
                await asyncio.sleep(0.02)
            assert runtime.status()["moody"]["busy"] == 0
            again = await _soon(runtime, "moody", b"{}")
        assert orjson.loads(again.payload) == pid  # not discarded: the same environment

    run(body())


def test_an_environment_that_dies_mid_invocation_fails_it_and_is_replaced(run) -> None:
    async def body() -> None:
        async with running("faulty.py") as runtime:
            pid = orjson.loads((await runtime.invoke("moody", b"{}")).payload)
            died = await _soon(runtime, "moody", orjson.dumps({"exit": True}))
            after = await _soon(runtime, "moody", b"{}")
        assert died.error()["errorType"] == "Runtime.ExitError"  # type: ignore[index]
        assert after.cold and orjson.loads(after.payload) != pid

    run(body())


def test_reserved_concurrency_is_leased_as_with_invoke(run) -> None:
    async def body() -> None:
        async with running("faulty.py") as runtime:
            calls = [_soon(runtime, "limited", b'{"sleep": 0.3}') for _ in range(3)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert sum(isinstance(o, Throttled) for o in outcomes) == 1
        assert sum(not isinstance(o, BaseException) for o in outcomes) == 2

    run(body())
