"""Event source mappings and async invocations end to end: real SQLite broker, real runtime
processes, handlers that record what they saw."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import orjson
import pytest

from sluice.broker.contract import OutgoingMessage
from sluice.config import Settings
from sluice.platform import Platform, Roles
from sluice.runtime.loader import load_app
from tests.aio import eventually

APP = str(Path(__file__).parent / "apps" / "esm_app.py")


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    monkeypatch.setenv("ESM_OUT", str(directory))
    return directory


def lines(out: Path, name: str) -> list[str]:
    path = out / name
    return path.read_text().splitlines() if path.exists() else []


async def start(tmp_path: Path) -> Platform:
    app, source = load_app(APP)
    settings = Settings(data_dir=tmp_path / "data", async_retry_delays=(0.2, 0.2))
    platform = Platform(app, source.ref, settings)
    await platform.start(Roles(dispatch=True, http=False))
    return platform


async def send(platform: Platform, queue: str, bodies: list[dict]) -> list[str]:
    messages = [OutgoingMessage(body=orjson.dumps(b).decode()) for b in bodies]
    return [r.message_id for r in await platform.broker.send(queue, messages)]


def test_partial_batch_failure_redelivers_only_failed_then_dead_letters(tmp_path, out):
    async def main() -> None:
        platform = await start(tmp_path)
        try:
            await send(platform, "work", [{"id": i, "fail": i == 3} for i in range(6)])

            async def settled() -> bool:
                dlq = await platform.broker.stats("work-dlq")
                work = await platform.broker.stats("work")
                return dlq.visible == 1 and work.total == 0

            await eventually(settled, timeout=20)
            seen = Counter(line.split()[0] for line in lines(out, "partial"))
            # The failed record was delivered exactly max_receive_count (3) times, the others once.
            assert seen == {"0": 1, "1": 1, "2": 1, "3": 3, "4": 1, "5": 1}
            [dead] = await platform.broker.receive("work-dlq", 10)
            assert orjson.loads(dead.body)["id"] == 3
            assert "3" in (dead.dead_letter_reason or "")
        finally:
            await platform.close()

    asyncio.run(main())


def test_max_concurrency_is_never_exceeded(tmp_path, out):
    async def main() -> None:
        platform = await start(tmp_path)
        try:
            await send(platform, "limited", [{"n": i} for i in range(24)])

            async def done() -> bool:
                return len(lines(out, "slow")) == 24

            await eventually(done, timeout=30)
        finally:
            await platform.close()
        intervals = [tuple(map(float, line.split()[:2])) for line in lines(out, "slow")]
        events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
        running = peak = 0
        for _, delta in events:
            running += delta
            peak = max(peak, running)
        assert peak <= 3
        assert peak >= 2  # the mapping did run batches concurrently

    asyncio.run(main())


def test_filter_criteria_deliver_matches_and_delete_the_rest(tmp_path, out):
    async def main() -> None:
        platform = await start(tmp_path)
        try:
            bodies = [{"id": str(i), "kind": "keep" if i % 2 else "drop"} for i in range(10)]
            await send(platform, "filtered", bodies)

            async def drained() -> bool:
                return (await platform.broker.stats("filtered")).total == 0

            await eventually(drained, timeout=20)
            assert sorted(lines(out, "picky")) == ["1", "3", "5", "7", "9"]
        finally:
            await platform.close()

    asyncio.run(main())


def test_async_invoke_that_always_fails_reaches_on_failure_after_three_attempts(tmp_path, out):
    async def main() -> None:
        platform = await start(tmp_path)
        try:
            request_id = await platform.submit("flaky", orjson.dumps({"n": 1}))
            ok_id = await platform.submit("flaky", orjson.dumps({"n": 2, "ok": True}))

            async def delivered() -> bool:
                return (await platform.broker.stats("failures")).visible == 2

            await eventually(delivered, timeout=20)
            records = {}
            for m in await platform.broker.receive("failures", 10):
                record = orjson.loads(m.body)
                records[record["requestContext"]["requestId"]] = record
            failed, succeeded = records[request_id], records[ok_id]
            assert failed["requestContext"]["condition"] == "RetriesExhausted"
            assert failed["requestContext"]["approximateInvokeCount"] == 3
            assert failed["requestPayload"] == {"n": 1}
            assert failed["responseContext"]["functionError"] == "Unhandled"
            assert failed["responsePayload"]["errorMessage"] == "flaky says no"
            assert succeeded["requestContext"]["condition"] == "Success"
            assert succeeded["responsePayload"] == {"done": 2}
            attempts = Counter(line.split()[0] for line in lines(out, "flaky"))
            assert attempts == {request_id: 3, ok_id: 1}
        finally:
            await platform.close()

    asyncio.run(main())


def test_async_invoke_rejects_malformed_payload_and_unknown_function(tmp_path, out):
    from sluice.errors import FunctionNotFound, InvalidPayload

    async def main() -> None:
        platform = await start(tmp_path)
        try:
            with pytest.raises(InvalidPayload):
                await platform.submit("flaky", b"{not json")
            with pytest.raises(FunctionNotFound):
                await platform.submit("nope", b"{}")
        finally:
            await platform.close()

    asyncio.run(main())


def test_a_disabled_mapping_leaves_messages_waiting_until_enabled(tmp_path, out):
    async def main() -> None:
        platform = await start(tmp_path)
        try:
            assert platform.dispatcher is not None
            await platform.dispatcher.set_enabled("filtered->picky", False)
            await send(platform, "filtered", [{"id": "a", "kind": "keep"}])
            await asyncio.sleep(1.5)
            assert (await platform.broker.stats("filtered")).visible == 1
            assert lines(out, "picky") == []
            await platform.dispatcher.set_enabled("filtered->picky", True)

            async def drained() -> bool:
                return lines(out, "picky") == ["a"]

            await eventually(drained, timeout=10)
            from sluice.errors import NotFound

            with pytest.raises(NotFound):
                await platform.dispatcher.set_enabled("nope->nothing", True)
        finally:
            await platform.close()

    asyncio.run(main())


def test_a_malformed_async_invocation_goes_to_the_dlq_with_its_reason(tmp_path, out):
    async def main() -> None:
        platform = await start(tmp_path)
        try:
            # Not sent by submit_async: no RequestId / Attempt / EnqueuedAt attributes.
            await send(platform, "_async_flaky", [{"n": 1}])

            async def dead_lettered() -> bool:
                return (await platform.broker.stats("_async_dlq")).visible == 1

            await eventually(dead_lettered, timeout=10)
            [dead] = await platform.broker.receive("_async_dlq", 10)
            assert "malformed async invocation" in (dead.dead_letter_reason or "")
            assert lines(out, "flaky") == []  # the function never ran it
        finally:
            await platform.close()

    asyncio.run(main())


def test_a_throttled_async_invocation_is_retried_and_not_counted_as_a_receive(tmp_path, out):
    async def main() -> None:
        platform = await start(tmp_path)
        try:
            sync_call = asyncio.ensure_future(
                platform.invoke("single", orjson.dumps({"who": "sync"}))
            )
            await asyncio.sleep(0.2)  # the sync call holds the only slot now
            await platform.submit("single", orjson.dumps({"who": "async"}))
            assert (await sync_call).ok

            async def ran() -> bool:
                return any(line.startswith("async end") for line in lines(out, "single"))

            await eventually(ran, timeout=15)
            starts = [line for line in lines(out, "single") if " start " in line]
            assert [line.split()[0] for line in starts] == ["sync", "async"]
            assert (await platform.broker.stats("_async_dlq")).total == 0
            assert (await platform.broker.stats("_async_single")).total == 0
        finally:
            await platform.close()

    asyncio.run(main())
