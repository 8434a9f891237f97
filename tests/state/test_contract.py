"""The state contract, run against every backend (see conftest.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from sluice.errors import NotFound, Unavailable, ValidationError
from sluice.state import Conflict, Record, StateStore
from tests.state.conftest import Backend

# -- records: CRUD and versions ----------------------------------------------------------------


def test_put_then_get_returns_the_same_record(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        before = time.time()
        written = await store.put("function", "payments/settle", {"memory": 256, "tags": ["a"]})
        assert written.kind == "function"
        assert written.key == "payments/settle"
        assert written.value == {"memory": 256, "tags": ["a"]}
        assert written.version == 1
        assert before <= written.updated_at <= time.time()
        assert await store.get("function", "payments/settle") == written
        assert await store.get("function", "payments/other") is None
        assert await store.get("route", "payments/settle") is None

    state.run(body)


def test_each_put_replaces_the_value_and_bumps_the_version(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        versions = [(await store.put("alias", "live", {"to": n})).version for n in range(1, 4)]
        assert versions == [1, 2, 3]
        record = await store.get("alias", "live")
        assert record is not None
        assert (record.value, record.version) == ({"to": 3}, 3)

    state.run(body)


def test_the_returned_value_is_not_the_callers_dict(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        value: dict[str, Any] = {"items": [1]}
        written = await store.put("plan", "p", value)
        value["items"].append(2)
        assert written.value == {"items": [1]}
        stored = await store.get("plan", "p")
        assert stored is not None and stored.value == {"items": [1]}

    state.run(body)


def test_records_are_frozen() -> None:
    record = Record("k", "key", {}, 1, 0.0)
    with pytest.raises(AttributeError):
        record.version = 2  # type: ignore[misc]


def test_create_only_refuses_an_existing_record(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        await store.put("apikey", "h1", {"plan": "gold"}, expect_version=0)
        with pytest.raises(Conflict) as caught:
            await store.put("apikey", "h1", {"plan": "free"}, expect_version=0)
        assert (caught.value.expected, caught.value.actual) == (0, 1)
        assert caught.value.status == 409
        record = await store.get("apikey", "h1")
        assert record is not None and (record.value, record.version) == ({"plan": "gold"}, 1)

    state.run(body)


def test_conditional_put_succeeds_only_on_the_expected_version(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        await store.put("route", "GET /a", {"fn": "one"})
        updated = await store.put("route", "GET /a", {"fn": "two"}, expect_version=1)
        assert updated.version == 2
        with pytest.raises(Conflict) as caught:
            await store.put("route", "GET /a", {"fn": "stale"}, expect_version=1)
        assert (caught.value.expected, caught.value.actual) == (1, 2)
        record = await store.get("route", "GET /a")
        assert record is not None and (record.value, record.version) == ({"fn": "two"}, 2)

    state.run(body)


def test_conditional_put_on_a_missing_record_conflicts_and_creates_nothing(
    state: Backend,
) -> None:
    async def body(store: StateStore) -> None:
        with pytest.raises(Conflict) as caught:
            await store.put("route", "GET /missing", {"fn": "x"}, expect_version=3)
        assert (caught.value.expected, caught.value.actual) == (3, 0)
        assert await store.get("route", "GET /missing") is None

    state.run(body)


async def _race(stores: list[StateStore], writers: int, expect_version: int) -> list[Any]:
    """`writers` puts of the same key with the same expectation, spread over `stores`."""
    return await asyncio.gather(
        *(
            stores[n % len(stores)].put(
                "mapping", "m1", {"writer": n}, expect_version=expect_version
            )
            for n in range(writers)
        ),
        return_exceptions=True,
    )


@pytest.mark.parametrize("expect_version", [0, 1])
def test_of_concurrent_conditional_writers_exactly_one_wins(
    state: Backend, expect_version: int
) -> None:
    async def body(store: StateStore) -> None:
        other = state.open()  # a second connection (pool) racing the first
        await other.start()
        try:
            if expect_version:
                await store.put("mapping", "m1", {"writer": "initial"})
            results = await _race([store, other], 10, expect_version)
        finally:
            await other.close()
        winners = [r for r in results if isinstance(r, Record)]
        losers = [r for r in results if isinstance(r, Conflict)]
        assert len(winners) == 1, results
        assert len(losers) == 9, results
        assert all(loser.actual == expect_version + 1 for loser in losers)
        assert await store.get("mapping", "m1") == winners[0]

    state.run(body)


def test_unconditional_concurrent_puts_each_get_their_own_version(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        results = await asyncio.gather(*(store.put("waf", "rule", {"n": n}) for n in range(20)))
        assert sorted(r.version for r in results) == list(range(1, 21))
        final = await store.get("waf", "rule")
        assert final is not None and final.version == 20

    state.run(body)


def test_delete(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        await store.put("function", "f", {"v": 1})
        assert await store.delete("function", "f") is True
        assert await store.get("function", "f") is None
        assert await store.delete("function", "f") is False
        # Re-created after a delete, a record starts again at version 1.
        assert (await store.put("function", "f", {"v": 2}, expect_version=0)).version == 1

    state.run(body)


def test_conditional_delete(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        await store.put("function", "f", {"v": 1})
        await store.put("function", "f", {"v": 2})
        with pytest.raises(Conflict) as caught:
            await store.delete("function", "f", expect_version=1)
        assert (caught.value.expected, caught.value.actual) == (1, 2)
        assert await store.get("function", "f") is not None
        assert await store.delete("function", "f", expect_version=2) is True
        with pytest.raises(Conflict):
            await store.delete("function", "f", expect_version=2)
        with pytest.raises(ValidationError):
            await store.delete("function", "f", expect_version=0)

    state.run(body)


def test_kinds_are_separate_namespaces(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        await store.put("function", "same", {"k": "function"})
        await store.put("route", "same", {"k": "route"})
        await store.delete("route", "same")
        record = await store.get("function", "same")
        assert record is not None and record.value == {"k": "function"}
        assert [r.kind for r in await store.list("function")] == ["function"]

    state.run(body)


# -- listing ------------------------------------------------------------------------------------

KEYS = ["b", "a/c", "a", "a/b", "ab", "a0", "é", "Z", "\U0001f600", "\uffff", "日本", "a/b/c"]


def test_list_orders_by_key_in_code_point_order(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        for key in KEYS:
            await store.put("route", key, {"key": key})
        await store.put("routes", "a", {"other": "kind"})
        listed = await store.list("route")
        assert [r.key for r in listed] == sorted(KEYS)
        assert all(r.value == {"key": r.key} and r.kind == "route" for r in listed)
        assert await store.list("nothing-here") == []

    state.run(body)


def test_list_filters_by_prefix(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        for key in KEYS:
            await store.put("route", key, {})
        assert [r.key for r in await store.list("route", "a/")] == ["a/b", "a/b/c", "a/c"]
        assert [r.key for r in await store.list("route", "a")] == sorted(
            k for k in KEYS if k.startswith("a")
        )
        assert [r.key for r in await store.list("route", "日")] == ["日本"]
        assert [r.key for r in await store.list("route", "\uffff")] == ["\uffff"]
        assert await store.list("route", "zz") == []

    state.run(body)


def test_list_prefix_edges_of_the_code_point_range(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        top = "\U0010ffff"
        keys = [f"x{top}", f"x{top}{top}z", "y", "\ud7ffa", "\ue000"]
        for key in keys:
            await store.put("edge", key, {})
        assert [r.key for r in await store.list("edge", f"x{top}")] == keys[:2]
        assert [r.key for r in await store.list("edge", "\ud7ff")] == ["\ud7ffa"]
        assert [r.key for r in await store.list("edge", top)] == []

    state.run(body)


def test_list_limit_and_pages(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        for key in KEYS:
            await store.put("route", key, {})
        assert [r.key for r in await store.list("route", limit=3)] == sorted(KEYS)[:3]
        assert await store.list("route", limit=0) == []
        pages: list[list[str]] = []
        after: str | None = None
        while page := await store.list("route", limit=5, after=after):
            pages.append([r.key for r in page])
            after = page[-1].key
        assert [len(p) for p in pages] == [5, 5, 2]
        assert [k for p in pages for k in p] == sorted(KEYS)
        assert [r.key for r in await store.list("route", "a/", after="a/b")] == ["a/b/c", "a/c"]

    state.run(body)


# -- values ------------------------------------------------------------------------------------


def test_unicode_values_round_trip(state: Backend) -> None:
    value = {
        "name": "Zürich \u2013 東京 \u2013 \U0001f680",
        "nul inside": "a\x00b",
        "ключ": ["ü", {"深い": {"emoji": "\U0001f600"}}],
        "numbers": [0, -1, 2**62, 1.5, True, None],
    }

    async def body(store: StateStore) -> None:
        await store.put("workflow", "exécution-1 ✓", value)
        record = await store.get("workflow", "exécution-1 ✓")
        assert record is not None and record.value == value

    state.run(body)


def test_large_values_round_trip(state: Backend) -> None:
    value = {
        "blob": "x" * (4 * 1024 * 1024),
        "items": [{"id": n, "name": f"item-{n}"} for n in range(20_000)],
    }

    async def body(store: StateStore) -> None:
        await store.put("execution", "big", value)
        record = await store.get("execution", "big")
        assert record is not None and record.value == value

    state.run(body)


@pytest.mark.parametrize(
    ("kind", "key", "value"),
    [
        ("", "k", {}),
        ("kind", "", {}),
        ("kind", "a\x00b", {}),
        ("kind", "\ud800", {}),
        ("kind", "k" * 2000, {}),
        ("kind", "k", ["not", "a", "dict"]),
        ("kind", "k", {"set": {1, 2}}),
        ("kind", "k", {1: "non-string key"}),
        ("kind", "k", {"huge": 2**70}),
    ],
)
def test_invalid_records_are_refused_and_nothing_is_stored(
    state: Backend, kind: str, key: str, value: Any
) -> None:
    async def body(store: StateStore) -> None:
        with pytest.raises(ValidationError):
            await store.put(kind, key, value)
        assert await store.list("kind") == []

    state.run(body)


@pytest.mark.parametrize("expect_version", [-1, True, 1.0, "1"])
def test_invalid_expect_version_is_refused(state: Backend, expect_version: Any) -> None:
    async def body(store: StateStore) -> None:
        with pytest.raises(ValidationError):
            await store.put("kind", "k", {}, expect_version=expect_version)
        assert await store.get("kind", "k") is None

    state.run(body)


@pytest.mark.parametrize(
    "kwargs", [{"limit": -1}, {"limit": 2.5}, {"prefix": 3}, {"after": b"a"}, {"prefix": "\x00"}]
)
def test_invalid_list_arguments_are_refused(state: Backend, kwargs: dict[str, Any]) -> None:
    async def body(store: StateStore) -> None:
        with pytest.raises(ValidationError):
            await store.list("kind", **kwargs)

    state.run(body)


# -- blobs -------------------------------------------------------------------------------------


def test_blobs_are_content_addressed(state: Backend) -> None:
    bundle = os.urandom(3 * 1024 * 1024)

    async def body(store: StateStore) -> None:
        digest = await store.put_blob(bundle)
        assert digest == hashlib.sha256(bundle).hexdigest()
        assert await store.put_blob(bundle) == digest  # idempotent
        assert await store.get_blob(digest) == bundle
        empty = await store.put_blob(b"")
        assert await store.get_blob(empty) == b""
        assert await store.put_blob(bytearray(b"abc")) == hashlib.sha256(b"abc").hexdigest()

    state.run(body)


def test_concurrent_puts_of_one_blob_all_succeed(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        digests = await asyncio.gather(*(store.put_blob(b"same bytes") for _ in range(10)))
        assert set(digests) == {hashlib.sha256(b"same bytes").hexdigest()}
        assert await store.get_blob(digests[0]) == b"same bytes"

    state.run(body)


def test_missing_and_malformed_blobs(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        with pytest.raises(NotFound):
            await store.get_blob(hashlib.sha256(b"never stored").hexdigest())
        for digest in ["", "abc", "G" * 64, hashlib.sha256(b"x").hexdigest().upper()]:
            with pytest.raises(ValidationError):
                await store.get_blob(digest)
        with pytest.raises(ValidationError):
            await store.put_blob("text, not bytes")  # type: ignore[arg-type]

    state.run(body)


# -- counters ----------------------------------------------------------------------------------


def test_incr(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        assert await store.incr("version:payments/settle") == 1
        assert await store.incr("version:payments/settle") == 2
        assert await store.incr("version:payments/settle", 10) == 12
        assert await store.incr("version:payments/settle", -2) == 10
        assert await store.incr("version:payments/settle", 0) == 10
        assert await store.incr("version:other") == 1
        assert await store.incr("new", 0) == 0

    state.run(body)


def test_concurrent_incr_has_no_gaps_or_repeats(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        other = state.open()
        await other.start()
        try:
            values = await asyncio.gather(*((store, other)[n % 2].incr("seq") for n in range(50)))
        finally:
            await other.close()
        assert sorted(values) == list(range(1, 51))

    state.run(body)


def test_incr_refuses_to_overflow(state: Backend) -> None:
    async def body(store: StateStore) -> None:
        top = 2**63 - 1
        assert await store.incr("c", top) == top
        with pytest.raises(ValidationError):
            await store.incr("c", 1)
        assert await store.incr("c", 0) == top
        with pytest.raises(ValidationError):
            await store.incr("c", 2**63)
        for bad in ["", "a\x00"]:
            with pytest.raises(ValidationError):
                await store.incr(bad)
        with pytest.raises(ValidationError):
            await store.incr("c", 1.5)  # type: ignore[arg-type]

    state.run(body)


# -- lifecycle and processes -------------------------------------------------------------------


def test_data_survives_a_restart(state: Backend) -> None:
    async def write(store: StateStore) -> str:
        await store.put("function", "f", {"v": 1})
        await store.incr("seq", 7)
        return await store.put_blob(b"bundle")

    digest = state.run(write)

    async def read(store: StateStore) -> None:
        record = await store.get("function", "f")
        assert record is not None and (record.value, record.version) == ({"v": 1}, 1)
        assert await store.incr("seq") == 8
        assert await store.get_blob(digest) == b"bundle"

    state.run(read)


def test_a_store_not_started_or_closed_is_unavailable(state: Backend) -> None:
    async def body() -> None:
        store = state.open()
        with pytest.raises(Unavailable):
            await store.get("k", "k")
        await store.start()
        await store.put("k", "k", {})
        await store.close()
        await store.close()  # twice is fine
        with pytest.raises(Unavailable):
            await store.put("k", "k", {})

    asyncio.run(body())


_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from sluice.state import open_state

    async def main():
        store = open_state(sys.argv[1])
        await store.start()
        try:
            values = [await store.incr("shared") for _ in range(25)]
        finally:
            await store.close()
        print(" ".join(map(str, values)))

    asyncio.run(main())
    """
)


def test_incr_is_atomic_across_processes(state: Backend) -> None:
    state.run(lambda store: store.start())  # create the schema before the processes race
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, state.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    values: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        values += [int(v) for v in out.split()]
    assert sorted(values) == list(range(1, 51))
