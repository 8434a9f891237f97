"""Deadlines: a call expires no earlier than its timeout and at most a slot later; a call that
finishes in time never expires."""

from __future__ import annotations

import asyncio

import pytest

from sluice.gateway.deadlines import Deadlines

RESOLUTION = 0.02


async def _wait(deadlines: Deadlines, timeout: float, sleep: float) -> str:
    """Sleep ``sleep`` s under a deadline of ``timeout`` s that cancels the sleep on expiry."""
    task = asyncio.current_task()
    assert task is not None
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        task.cancel()

    deadline = deadlines.start(timeout, expire)
    try:
        await asyncio.sleep(sleep)
    except asyncio.CancelledError:
        if expired:
            return "timed out"
        raise
    finally:
        deadlines.finish(deadline)
    return "done"


def test_a_call_past_its_deadline_is_cancelled_within_one_slot() -> None:
    async def main() -> None:
        deadlines = Deadlines(RESOLUTION)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await _wait(deadlines, 0.1, 10) == "timed out"
        elapsed = loop.time() - started
        assert 0.1 <= elapsed < 0.1 + 3 * RESOLUTION
        assert deadlines._slots == {} and deadlines._timer is None

    asyncio.run(main())


def test_calls_that_finish_in_time_leave_nothing_behind() -> None:
    async def main() -> None:
        deadlines = Deadlines(RESOLUTION)
        results = await asyncio.gather(*(_wait(deadlines, 5, 0.01) for _ in range(50)))
        assert results == ["done"] * 50
        assert deadlines._slots == {}
        await asyncio.sleep(2 * RESOLUTION)
        assert deadlines._timer is None  # the timer stops when nothing waits

    asyncio.run(main())


def test_an_outer_cancellation_is_not_mistaken_for_a_timeout() -> None:
    async def main() -> None:
        deadlines = Deadlines(RESOLUTION)
        task = asyncio.create_task(_wait(deadlines, 5, 10))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert deadlines._slots == {}

    asyncio.run(main())


def test_mixed_deadlines_expire_in_order() -> None:
    async def main() -> None:
        deadlines = Deadlines(RESOLUTION)
        short = asyncio.create_task(_wait(deadlines, 0.05, 10))
        long = asyncio.create_task(_wait(deadlines, 0.3, 10))
        quick = asyncio.create_task(_wait(deadlines, 0.3, 0.01))
        assert await short == "timed out"
        assert not long.done()
        assert await quick == "done"
        assert await long == "timed out"

    asyncio.run(main())


def test_an_expiry_that_raises_is_logged_and_the_others_still_expire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        deadlines = Deadlines(RESOLUTION)
        expired: list[str] = []

        def broken() -> None:
            raise RuntimeError("expiry failed")

        deadlines.start(0.01, broken)
        deadlines.start(0.01, lambda: expired.append("second"))
        deadlines.start(0.05, lambda: expired.append("later"))
        await asyncio.sleep(0.05 + 3 * RESOLUTION)
        assert expired == ["second", "later"]
        assert deadlines._slots == {}

    asyncio.run(main())
    assert "a deadline's expiry failed" in caplog.text
