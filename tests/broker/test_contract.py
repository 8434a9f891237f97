"""The broker contract: every backend runs exactly these cases (see `sluice.broker.contract`)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import pytest

from sluice.broker.contract import (
    DEDUP_WINDOW,
    MAX_RECEIVE_BATCH,
    Broker,
    Message,
    OutgoingMessage,
    QueueConfig,
    SendOutcome,
    SendsSoon,
)
from sluice.broker.validation import md5_of_body
from sluice.errors import (
    MessageTooLarge,
    QueueDoesNotExist,
    ReceiptHandleIsInvalid,
    ValidationError,
)
from tests.broker.conftest import Clock, Run

ATTRS = {
    "kind": {"DataType": "String", "StringValue": "transfer"},
    "amount": {"DataType": "Number", "StringValue": "12.5"},
}


def _msgs(*bodies: str, **kw: Any) -> list[OutgoingMessage]:
    return [OutgoingMessage(body, **kw) for body in bodies]


async def _drain(broker: Broker, queue: str) -> list[Message]:
    """Receive and delete until the queue has nothing visible."""
    seen: list[Message] = []
    while batch := await broker.receive(queue, 100):
        seen += batch
        assert all(await broker.delete(queue, [m.receipt_handle for m in batch]))
    return seen


# -- queues -----------------------------------------------------------------------------------


def test_queue_lifecycle(broker: Broker, run: Run[Any]) -> None:
    run(broker.create_queue(QueueConfig("jobs", visibility_timeout=5)))
    run(broker.create_queue(QueueConfig("other.fifo")))
    assert run(broker.get_queue("jobs")).visibility_timeout == 5
    assert sorted(run(broker.list_queues())) == ["jobs", "other.fifo"]
    run(broker.send("jobs", _msgs("kept")))
    # Creating again updates the configuration and keeps the messages.
    run(broker.create_queue(QueueConfig("jobs", visibility_timeout=7)))
    assert run(broker.get_queue("jobs")).visibility_timeout == 7
    assert [m.body for m in run(broker.receive("jobs", 10))] == ["kept"]
    run(broker.delete_queue("jobs"))
    assert run(broker.list_queues()) == ["other.fifo"]
    with pytest.raises(QueueDoesNotExist):
        run(broker.get_queue("jobs"))
    # A queue created again under the same name starts empty.
    run(broker.create_queue(QueueConfig("jobs")))
    assert run(broker.receive("jobs", 10)) == []


def test_invalid_queue_config_is_refused(broker: Broker, run: Run[Any]) -> None:
    for bad in (
        QueueConfig("has space"),
        QueueConfig("q", visibility_timeout=-1),
        QueueConfig("q", dead_letter="dlq"),  # no max_receive_count
        QueueConfig("q.fifo", dead_letter="dlq", max_receive_count=2),  # DLQ of another type
    ):
        with pytest.raises(ValidationError):
            run(broker.create_queue(bad))
    assert run(broker.list_queues()) == []


# -- send, receive, delete --------------------------------------------------------------------


def test_send_receive_delete_round_trip(broker: Broker, run: Run[Any], clock: Clock) -> None:
    run(broker.create_queue(QueueConfig("jobs")))
    before = int(clock() * 1000)
    [sent] = run(broker.send("jobs", [OutgoingMessage('{"amount": 5}', attributes=ATTRS)]))
    assert str(uuid.UUID(sent.message_id)) == sent.message_id
    assert sent.md5_of_body == md5_of_body('{"amount": 5}')
    assert sent.sequence_number is None and not sent.duplicate
    clock.advance(2)
    [got] = run(broker.receive("jobs", 10))
    assert got.message_id == sent.message_id
    assert got.body == '{"amount": 5}'
    assert dict(got.attributes) == ATTRS
    assert got.md5_of_body == sent.md5_of_body
    assert got.receive_count == 1
    assert before <= got.sent_timestamp <= before + 1000
    assert got.sent_timestamp + 2000 <= got.first_receive_timestamp
    assert got.dead_letter_reason is None
    assert run(broker.delete("jobs", [got.receipt_handle])) == [True]
    assert run(broker.receive("jobs", 10)) == []
    assert run(broker.stats("jobs")).total == 0


def test_bodies_come_back_exactly(broker: Broker, run: Run[Any]) -> None:
    """Quotes, backslashes, control characters (NUL included), non-ASCII and JSON-looking text
    are delivered byte for byte, however the backend packs a batch."""
    run(broker.create_queue(QueueConfig("jobs")))
    bodies = ['{"a": "b\\"c"}', "tab\tnew\nline\r\x00nul\x01", "zürich ✓ 😀", "\\u0000", " "]
    run(broker.send("jobs", _msgs(*bodies)))
    got = run(broker.receive("jobs", 10))
    assert sorted(m.body for m in got) == sorted(bodies)
    assert all(run(broker.delete("jobs", [m.receipt_handle for m in got])))
    assert run(broker.stats("jobs")).total == 0


def test_batch_send_and_receive_limits(broker: Broker, run: Run[Any]) -> None:
    run(broker.create_queue(QueueConfig("jobs")))
    bodies = [f"m{i}" for i in range(250)]
    results = run(broker.send("jobs", _msgs(*bodies)))
    assert len({r.message_id for r in results}) == 250
    assert len(run(broker.receive("jobs", 7))) == 7
    assert len(run(broker.receive("jobs", 200))) == 200
    rest = run(broker.receive("jobs", MAX_RECEIVE_BATCH))
    assert len(rest) == 43
    assert run(broker.stats("jobs")).in_flight == 250


def test_concurrent_sends_all_stored(broker: Broker, run: Run[Any]) -> None:
    run(broker.create_queue(QueueConfig("jobs")))

    async def scenario() -> None:
        sends = [broker.send("jobs", _msgs(*(f"{s}-{i}" for i in range(20)))) for s in range(40)]
        results = await asyncio.gather(*sends)
        ids = {r.message_id for batch in results for r in batch}
        assert len(ids) == 800
        assert {m.message_id for m in await _drain(broker, "jobs")} == ids

    run(scenario())


def test_failing_send_does_not_fail_concurrent_sends(broker: Broker, run: Run[Any]) -> None:
    run(broker.create_queue(QueueConfig("jobs", max_message_size=1024)))

    async def scenario() -> None:
        outcomes = await asyncio.gather(
            broker.send("jobs", _msgs("a1", "a2")),
            broker.send("jobs", _msgs("ok", "x" * 2000)),  # too large: the whole batch is refused
            broker.send("missing", _msgs("lost")),
            broker.send("jobs", _msgs("b1")),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], MessageTooLarge)
        assert isinstance(outcomes[2], QueueDoesNotExist)
        assert sorted(m.body for m in await _drain(broker, "jobs")) == ["a1", "a2", "b1"]

    run(scenario())


def test_send_soon_answers_each_send_alone(broker: Broker, run: Run[Any]) -> None:
    """Sends handed over in one event-loop iteration (as a gateway's queue routes do): each gets
    its own outcome, in any order of arrival; a refused one stores nothing and costs the others
    nothing; the ids and MD5s each is told are those stored."""
    assert isinstance(broker, SendsSoon)
    run(broker.create_queue(QueueConfig("jobs", max_message_size=1024)))
    run(broker.create_queue(QueueConfig("jobs.fifo", content_based_deduplication=True)))

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        answers: list[asyncio.Future[SendOutcome]] = []

        def soon(queue: str, messages: list[OutgoingMessage]) -> None:
            answer: asyncio.Future[SendOutcome] = loop.create_future()
            answers.append(answer)
            broker.send_soon(queue, messages, answer.set_result)

        soon("jobs", _msgs("a1", "a2", attributes=ATTRS))
        soon("jobs", _msgs("ok", "x" * 2000))  # too large: this send alone is refused
        soon("missing", _msgs("lost"))
        soon("jobs", _msgs(*(f"b{i}" for i in range(30))))
        soon("jobs.fifo", _msgs("f1", group_id="g"))
        soon("jobs", _msgs("c1"))
        outcomes = await asyncio.wait_for(asyncio.gather(*answers), 10)
        assert isinstance(outcomes[1], MessageTooLarge)
        assert isinstance(outcomes[2], QueueDoesNotExist)
        sent = {}
        for index, bodies in [(0, ["a1", "a2"]), (3, [f"b{i}" for i in range(30)]), (5, ["c1"])]:
            results = outcomes[index]
            assert isinstance(results, list)
            assert [r.md5_of_body for r in results] == [md5_of_body(b) for b in bodies]
            sent.update({r.message_id: b for r, b in zip(results, bodies, strict=True)})
        stored = await _drain(broker, "jobs")
        assert {m.message_id: m.body for m in stored} == sent
        assert all(m.attributes == ATTRS for m in stored if m.body in ("a1", "a2"))
        (fifo,) = outcomes[4]  # type: ignore[misc]
        assert fifo.sequence_number is not None
        assert [m.message_id for m in await _drain(broker, "jobs.fifo")] == [fifo.message_id]

    run(scenario())


# -- visibility and receipts ------------------------------------------------------------------


def test_visibility_expiry_redelivers(broker: Broker, run: Run[Any]) -> None:
    run(broker.create_queue(QueueConfig("jobs", visibility_timeout=1)))
    run(broker.send("jobs", _msgs("again")))
    [first] = run(broker.receive("jobs"))
    assert run(broker.receive("jobs")) == []
    time.sleep(1.1)
    [second] = run(broker.receive("jobs"))
    assert second.message_id == first.message_id
    assert second.receive_count == 2
    assert second.receipt_handle != first.receipt_handle
    assert second.first_receive_timestamp == first.first_receive_timestamp


def test_stale_receipt_cannot_delete_or_change(broker: Broker, run: Run[Any], clock: Clock) -> None:
    run(broker.create_queue(QueueConfig("jobs", visibility_timeout=10)))
    run(broker.send("jobs", _msgs("held twice")))
    [first] = run(broker.receive("jobs"))
    clock.advance(11)
    [second] = run(broker.receive("jobs"))
    assert run(broker.delete("jobs", [first.receipt_handle])) == [False]
    assert run(broker.change_visibility("jobs", first.receipt_handle, 0)) is False
    assert run(broker.dead_letter("jobs", first.receipt_handle, "stale")) is False
    stats = run(broker.stats("jobs"))
    assert (stats.visible, stats.in_flight) == (0, 1)
    assert run(broker.delete("jobs", [first.receipt_handle, second.receipt_handle])) == [
        False,
        True,
    ]
    assert run(broker.stats("jobs")).total == 0
    # Deleted: the current receipt is now stale too.
    assert run(broker.delete("jobs", [second.receipt_handle])) == [False]


def test_receipt_after_expiry_still_deletes_when_nobody_else_holds(
    broker: Broker, run: Run[Any], clock: Clock
) -> None:
    run(broker.create_queue(QueueConfig("jobs", visibility_timeout=1)))
    run(broker.send("jobs", _msgs("slow consumer")))
    [m] = run(broker.receive("jobs"))
    clock.advance(5)
    assert run(broker.delete("jobs", [m.receipt_handle])) == [True]
    assert run(broker.receive("jobs")) == []


def test_change_visibility(broker: Broker, run: Run[Any], clock: Clock) -> None:
    run(broker.create_queue(QueueConfig("jobs", visibility_timeout=5)))
    run(broker.send("jobs", _msgs("m")))
    [m] = run(broker.receive("jobs"))
    assert run(broker.change_visibility("jobs", m.receipt_handle, 60)) is True
    clock.advance(30)
    assert run(broker.receive("jobs")) == []
    assert run(broker.change_visibility("jobs", m.receipt_handle, 0)) is True
    [again] = run(broker.receive("jobs"))
    assert (again.message_id, again.receive_count) == (m.message_id, 2)
    with pytest.raises(ValidationError):
        run(broker.change_visibility("jobs", again.receipt_handle, -1))


def test_visibility_timeout_per_receive_overrides_queue(
    broker: Broker, run: Run[Any], clock: Clock
) -> None:
    run(broker.create_queue(QueueConfig("jobs", visibility_timeout=600)))
    run(broker.send("jobs", _msgs("m")))
    assert len(run(broker.receive("jobs", visibility_timeout=2))) == 1
    clock.advance(3)
    [m] = run(broker.receive("jobs"))  # the queue's 600 s from now on
    clock.advance(300)
    assert run(broker.receive("jobs")) == []
    assert m.receive_count == 2


# -- dead letters and redrive -----------------------------------------------------------------


def _with_dlq(broker: Broker, run: Run[Any], name: str = "jobs", max_count: int = 3) -> None:
    run(broker.create_queue(QueueConfig(f"{name}-dlq")))
    run(
        broker.create_queue(
            QueueConfig(name, dead_letter=f"{name}-dlq", max_receive_count=max_count)
        )
    )


def test_dead_letter_after_exactly_max_receive_count(
    broker: Broker, run: Run[Any], clock: Clock
) -> None:
    _with_dlq(broker, run, max_count=3)
    [sent] = run(broker.send("jobs", [OutgoingMessage("poison", attributes=ATTRS)]))
    counts = []
    for _ in range(3):
        [m] = run(broker.receive("jobs", visibility_timeout=1))
        counts.append(m.receive_count)
        clock.advance(2)
    assert counts == [1, 2, 3]
    assert run(broker.receive("jobs", 10)) == []  # the 4th receive moves it instead
    assert run(broker.stats("jobs")).total == 0
    [dead] = run(broker.receive("jobs-dlq"))
    assert (dead.message_id, dead.body, dict(dead.attributes)) == (sent.message_id, "poison", ATTRS)
    assert dead.dead_letter_reason and "maxReceiveCount" in dead.dead_letter_reason
    assert run(broker.change_visibility("jobs-dlq", dead.receipt_handle, 0))

    assert run(broker.redrive("jobs-dlq")) == 1
    assert run(broker.stats("jobs-dlq")).total == 0
    [back] = run(broker.receive("jobs"))
    assert (back.message_id, back.body, back.receive_count) == (sent.message_id, "poison", 1)
    assert back.dead_letter_reason is None


def test_dead_letter_moves_one_held_message_now(broker: Broker, run: Run[Any]) -> None:
    _with_dlq(broker, run, max_count=5)
    run(broker.send("jobs", _msgs("malformed", "fine")))
    batch = run(broker.receive("jobs", 10))
    bad = next(m for m in batch if m.body == "malformed")
    assert run(broker.dead_letter("jobs", bad.receipt_handle, "not JSON")) is True
    assert run(broker.dead_letter("jobs", bad.receipt_handle, "again")) is False
    [dead] = run(broker.receive("jobs-dlq"))
    assert (dead.body, dead.dead_letter_reason) == ("malformed", "not JSON")
    assert run(broker.stats("jobs")).in_flight == 1


def test_dead_letter_without_dlq_deletes(broker: Broker, run: Run[Any]) -> None:
    run(broker.create_queue(QueueConfig("jobs")))
    run(broker.send("jobs", _msgs("malformed")))
    [m] = run(broker.receive("jobs"))
    assert run(broker.dead_letter("jobs", m.receipt_handle, "not JSON")) is True
    assert run(broker.stats("jobs")).total == 0


def test_redrive_target_and_limit(broker: Broker, run: Run[Any]) -> None:
    run(broker.create_queue(QueueConfig("dlq")))
    for name in ("a", "b"):
        run(broker.create_queue(QueueConfig(name, dead_letter="dlq", max_receive_count=1)))
    run(broker.send("dlq", _msgs("d1", "d2", "d3")))
    with pytest.raises(ValidationError):
        run(broker.redrive("dlq"))  # two queues use it: ambiguous
    assert run(broker.redrive("dlq", to="b", limit=2)) == 2
    assert run(broker.redrive("dlq", to="a")) == 1
    assert run(broker.redrive("dlq", to="a")) == 0
    assert len(run(broker.receive("b", 10))) == 2
    assert len(run(broker.receive("a", 10))) == 1
    with pytest.raises(QueueDoesNotExist):
        run(broker.redrive("dlq", to="missing"))


# -- delay, purge, stats, retention -----------------------------------------------------------


def test_delay_per_message_and_queue_default(broker: Broker, run: Run[Any], clock: Clock) -> None:
    run(broker.create_queue(QueueConfig("jobs", delay=10, visibility_timeout=600)))
    run(broker.send("jobs", _msgs("default")))
    run(broker.send("jobs", _msgs("later", delay=100)))
    run(broker.send("jobs", _msgs("now", delay=0)))
    assert [m.body for m in run(broker.receive("jobs", 10))] == ["now"]
    assert run(broker.stats("jobs")).delayed == 2
    clock.advance(11)
    assert [m.body for m in run(broker.receive("jobs", 10))] == ["default"]
    clock.advance(90)
    assert [m.body for m in run(broker.receive("jobs", 10))] == ["later"]
    with pytest.raises(ValidationError):
        run(broker.send("jobs", _msgs("too late", delay=901)))


def test_purge(broker: Broker, run: Run[Any]) -> None:
    run(broker.create_queue(QueueConfig("jobs")))
    run(broker.send("jobs", _msgs(*(str(i) for i in range(30)))))
    run(broker.send("jobs", _msgs("delayed", delay=60)))
    run(broker.receive("jobs", 5))
    assert run(broker.purge("jobs")) == 31
    assert run(broker.stats("jobs")).total == 0
    assert run(broker.receive("jobs", 10)) == []
    assert run(broker.purge("jobs")) == 0


def test_stats(broker: Broker, run: Run[Any], clock: Clock) -> None:
    run(broker.create_queue(QueueConfig("jobs", visibility_timeout=30)))
    empty = run(broker.stats("jobs"))
    assert (empty.visible, empty.in_flight, empty.delayed, empty.oldest_age) == (0, 0, 0, 0)
    run(broker.send("jobs", _msgs("a", "b", "c", "d")))
    clock.advance(40)
    run(broker.send("jobs", _msgs("e", delay=50)))
    run(broker.receive("jobs", 3))
    stats = run(broker.stats("jobs"))
    assert stats.name == "jobs"
    assert (stats.visible, stats.in_flight, stats.delayed) == (1, 3, 1)
    assert 40 <= stats.oldest_age < 45
    assert stats.total == 5


def test_retention_expires_messages(broker: Broker, run: Run[Any], clock: Clock) -> None:
    run(broker.create_queue(QueueConfig("jobs", retention=60)))
    run(broker.send("jobs", _msgs("old")))
    clock.advance(30)
    run(broker.send("jobs", _msgs("young")))
    clock.advance(31)
    assert [m.body for m in run(broker.receive("jobs", 10))] == ["young"]
    assert run(broker.stats("jobs")).total == 1
    clock.advance(60)
    assert run(broker.receive("jobs", 10)) == []
    assert run(broker.stats("jobs")).total == 0


# -- long polling -----------------------------------------------------------------------------


def test_long_poll_wakes_on_send_and_times_out(broker: Broker, run: Run[Any]) -> None:
    run(broker.create_queue(QueueConfig("jobs")))

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await broker.receive("jobs", 10, wait=0.3) == []
        assert 0.25 <= loop.time() - start < 1.5

        async def late_send() -> None:
            await asyncio.sleep(0.2)
            await broker.send("jobs", _msgs("woken"))

        start = loop.time()
        got, _ = await asyncio.gather(broker.receive("jobs", 10, wait=1.9), late_send())
        assert [m.body for m in got] == ["woken"]
        assert loop.time() - start < 1.2

    run(scenario())


# -- FIFO -------------------------------------------------------------------------------------


def _fifo(broker: Broker, run: Run[Any], name: str = "jobs.fifo", **kw: Any) -> None:
    run(broker.create_queue(QueueConfig(name, content_based_deduplication=True, **kw)))


def _fifo_send(broker: Broker, run: Run[Any], group: str, *bodies: str, queue: str = "jobs.fifo"):
    return run(broker.send(queue, [OutgoingMessage(b, group_id=group) for b in bodies]))


def test_fifo_order_and_sequence_numbers(broker: Broker, run: Run[Any]) -> None:
    _fifo(broker, run)
    sent = []
    for i in range(5):
        for group in ("a", "b", "c"):
            sent += _fifo_send(broker, run, group, f"{group}{i}")
    seqs = [int(r.sequence_number) for r in sent]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    got = run(broker.receive("jobs.fifo", 100))
    assert len(got) == 15
    for group in ("a", "b", "c"):
        assert [m.body for m in got if m.group_id == group] == [f"{group}{i}" for i in range(5)]
    assert all(m.sequence_number and m.deduplication_id for m in got)


def test_fifo_group_in_flight_blocks_the_group(broker: Broker, run: Run[Any], clock: Clock) -> None:
    _fifo(broker, run, visibility_timeout=10)
    _fifo_send(broker, run, "a", "a1", "a2", "a3")
    _fifo_send(broker, run, "b", "b1")
    [head] = run(broker.receive("jobs.fifo", 1))
    assert head.body in ("a1", "b1")
    rest = run(broker.receive("jobs.fifo", 10))
    # A group with a message in flight delivers nothing more.
    assert head.group_id not in {m.group_id for m in rest}
    a_msgs = [m for m in [head, *rest] if m.group_id == "a"]
    assert [m.body for m in a_msgs] == ["a1", "a2", "a3"][: len(a_msgs)]
    assert run(broker.receive("jobs.fifo", 10)) == []
    # An expired visibility gives the group back, from its first undeleted message.
    clock.advance(11)
    again = run(broker.receive("jobs.fifo", 10))
    assert [m.body for m in again if m.group_id == "a"] == ["a1", "a2", "a3"]
    a1 = next(m for m in again if m.body == "a1")
    assert run(broker.delete("jobs.fifo", [a1.receipt_handle])) == [True]
    clock.advance(11)
    assert [m.body for m in run(broker.receive("jobs.fifo", 10)) if m.group_id == "a"] == [
        "a2",
        "a3",
    ]


def test_fifo_group_held_while_any_message_in_flight(broker: Broker, run: Run[Any]) -> None:
    _fifo(broker, run, visibility_timeout=60)
    _fifo_send(broker, run, "a", "a1", "a2")
    a1, a2 = run(broker.receive("jobs.fifo", 10))
    # a1 becomes visible again while a2 is still held: the group stays closed.
    assert run(broker.change_visibility("jobs.fifo", a1.receipt_handle, 0))
    assert run(broker.receive("jobs.fifo", 10)) == []
    assert run(broker.delete("jobs.fifo", [a2.receipt_handle])) == [True]
    [again] = run(broker.receive("jobs.fifo", 10))
    assert (again.body, again.receive_count) == ("a1", 2)


def test_fifo_queue_delay_keeps_group_order(broker: Broker, run: Run[Any], clock: Clock) -> None:
    _fifo(broker, run, delay=10, visibility_timeout=60)
    _fifo_send(broker, run, "a", "a1")
    clock.advance(5)
    _fifo_send(broker, run, "a", "a2")
    assert run(broker.receive("jobs.fifo", 10)) == []
    assert run(broker.stats("jobs.fifo")).delayed == 2
    clock.advance(6)
    [a1] = run(broker.receive("jobs.fifo", 10))  # a2 is still delayed
    assert a1.body == "a1"
    assert run(broker.delete("jobs.fifo", [a1.receipt_handle])) == [True]
    clock.advance(5)
    assert [m.body for m in run(broker.receive("jobs.fifo", 10))] == ["a2"]
    with pytest.raises(ValidationError):  # FIFO delays are per queue
        run(broker.send("jobs.fifo", [OutgoingMessage("x", group_id="a", delay=1)]))


def test_fifo_concurrent_receivers_keep_each_group_in_order(broker: Broker, run: Run[Any]) -> None:
    _fifo(broker, run, visibility_timeout=60)
    groups = [f"g{g}" for g in range(6)]
    order = [(g, i) for i in range(15) for g in groups]
    random.Random(7).shuffle(order)  # interleave groups, keep each group's own order
    per_group_next = dict.fromkeys(groups, 0)
    batch = []
    for g, _ in order:
        batch.append(OutgoingMessage(f"{g}:{per_group_next[g]}", group_id=g))
        per_group_next[g] += 1
    run(broker.send("jobs.fifo", batch))
    processed: dict[str, list[int]] = {g: [] for g in groups}
    holder: dict[str, int] = {}

    async def consumer(me: int) -> None:
        idle = 0
        while idle < 5:
            got = await broker.receive("jobs.fifo", 4, wait=0.05)
            if not got:
                idle += 1
                continue
            idle = 0
            for group in {m.group_id for m in got}:
                assert group is not None
                assert group not in holder, f"{group} held by {holder.get(group)} and {me}"
                holder[group] = me
            await asyncio.sleep(random.random() / 100)
            for m in got:
                group, index = m.body.split(":")
                processed[group].append(int(index))
            # Release before deleting: the broker must not hand the group out before the delete.
            for group in {m.group_id for m in got}:
                del holder[group]
            assert all(await broker.delete("jobs.fifo", [m.receipt_handle for m in got]))

    async def scenario() -> None:
        await asyncio.gather(*(consumer(k) for k in range(4)))

    run(scenario())
    assert processed == {g: list(range(15)) for g in groups}


def test_fifo_deduplication_window(broker: Broker, run: Run[Any], clock: Clock) -> None:
    run(broker.create_queue(QueueConfig("jobs.fifo")))
    first = run(broker.send("jobs.fifo", _msgs("pay 5", group_id="g", deduplication_id="t1")))[0]
    clock.advance(DEDUP_WINDOW - 10)
    again = run(broker.send("jobs.fifo", _msgs("pay 5 again", group_id="g", deduplication_id="t1")))
    assert again[0].duplicate and again[0].message_id == first.message_id
    assert again[0].sequence_number == first.sequence_number
    assert run(broker.stats("jobs.fifo")).total == 1
    clock.advance(20)
    after = run(broker.send("jobs.fifo", _msgs("pay 5", group_id="g", deduplication_id="t1")))[0]
    assert not after.duplicate and after.message_id != first.message_id
    assert run(broker.stats("jobs.fifo")).total == 2


def test_fifo_content_based_deduplication(broker: Broker, run: Run[Any]) -> None:
    _fifo(broker, run)
    results = run(
        broker.send(
            "jobs.fifo",
            [OutgoingMessage(b, group_id="g") for b in ("same", "same", "other")],
        )
    )
    assert [r.duplicate for r in results] == [False, True, False]
    assert results[0].message_id == results[1].message_id
    assert [m.body for m in run(broker.receive("jobs.fifo", 10))] == ["same", "other"]


def test_fifo_dead_letter_keeps_group_order(broker: Broker, run: Run[Any], clock: Clock) -> None:
    run(broker.create_queue(QueueConfig("jobs-dlq.fifo")))
    _fifo(broker, run, visibility_timeout=5, dead_letter="jobs-dlq.fifo", max_receive_count=1)
    _fifo_send(broker, run, "g", "g1", "g2")
    [m] = run(broker.receive("jobs.fifo", 1))
    assert m.body == "g1"
    clock.advance(6)
    # g1 has had its one receive: it moves, and g2 comes next.
    assert [x.body for x in run(broker.receive("jobs.fifo", 10))] == ["g2"]
    [dead] = run(broker.receive("jobs-dlq.fifo"))
    assert (dead.body, dead.group_id) == ("g1", "g")


# -- bad input --------------------------------------------------------------------------------


def test_unknown_queue(broker: Broker, run: Run[Any]) -> None:
    run(broker.create_queue(QueueConfig("jobs")))
    run(broker.send("jobs", _msgs("m")))
    [m] = run(broker.receive("jobs"))
    calls = [
        broker.get_queue("nope"),
        broker.delete_queue("nope"),
        broker.send("nope", _msgs("m")),
        broker.receive("nope"),
        broker.receive("nope", wait=0.2),
        broker.delete("nope", [m.receipt_handle]),
        broker.change_visibility("nope", m.receipt_handle, 0),
        broker.dead_letter("nope", m.receipt_handle, "r"),
        broker.purge("nope"),
        broker.stats("nope"),
        broker.redrive("nope", to="jobs"),
    ]
    for call in calls:
        with pytest.raises(QueueDoesNotExist):
            run(call)
    assert run(broker.stats("jobs")).in_flight == 1


def test_bad_messages_store_nothing(broker: Broker, run: Run[Any]) -> None:
    run(broker.create_queue(QueueConfig("jobs", max_message_size=1024)))
    _fifo(broker, run)
    with pytest.raises(MessageTooLarge):
        run(broker.send("jobs", _msgs("fine", "x" * 1025)))
    with pytest.raises(MessageTooLarge):  # attributes count towards the size
        big = {"a": {"DataType": "String", "StringValue": "y" * 1000}}
        run(broker.send("jobs", [OutgoingMessage("x" * 100, attributes=big)]))
    with pytest.raises(ValidationError):
        run(broker.send("jobs", []))
    with pytest.raises(ValidationError):
        run(broker.send("jobs", _msgs("grouped", group_id="g")))
    with pytest.raises(ValidationError):
        run(broker.send("jobs.fifo", [OutgoingMessage("a", group_id="g"), OutgoingMessage("b")]))
    assert run(broker.stats("jobs")).total == 0
    assert run(broker.stats("jobs.fifo")).total == 0


def test_bad_receive_arguments(broker: Broker, run: Run[Any]) -> None:
    run(broker.create_queue(QueueConfig("jobs")))
    for kwargs in (
        {"max_messages": 0},
        {"max_messages": MAX_RECEIVE_BATCH + 1},
        {"wait": -1},
        {"wait": 21},
        {"visibility_timeout": -1},
    ):
        with pytest.raises(ValidationError):
            run(broker.receive("jobs", **kwargs))


@pytest.mark.parametrize(
    "handle",
    ["", "garbage", "x.y", "..", "9" * 40, "\N{SUPERSCRIPT TWO}.1", "\N{COLLISION SYMBOL}"],
)
def test_garbage_receipt_handle(broker: Broker, run: Run[Any], handle: str) -> None:
    run(broker.create_queue(QueueConfig("jobs")))
    with pytest.raises(ReceiptHandleIsInvalid):
        run(broker.delete("jobs", [handle]))
    with pytest.raises(ReceiptHandleIsInvalid):
        run(broker.change_visibility("jobs", handle, 5))
    with pytest.raises(ReceiptHandleIsInvalid):
        run(broker.dead_letter("jobs", handle, "r"))
