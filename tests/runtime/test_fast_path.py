"""The warm path's parts: the invocation channel's reader and parser, lazy logs,
log files written behind, request ids, contexts, and stopping idle environments."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from pathlib import Path

import orjson
import pytest

from sluice.runtime import channel
from sluice.runtime.context import ContextFactory, LambdaContext, RequestIds
from sluice.runtime.contract import LOG_TAIL, InvocationResult
from sluice.runtime.logfiles import LogFiles
from sluice.runtime.reports import InvocationLog
from tests.runtime.conftest import started

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _request(n: int, payload: bytes, extra: bytes = b"") -> bytes:
    return channel.encode_request(f"r-{n}".encode(), 100.0 + n, extra, payload)


def _write_in_pieces(fd: int, data: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in [*cuts, len(data)]:
        channel.write_all(fd, data[start:cut])
        start = cut


def test_request_reader_handles_split_joined_and_large_requests() -> None:
    big = bytes(range(256)) * (3 * channel.READ_SIZE // 256 + 7)  # spans several reads
    extra = channel.encode_extra({"custom": {"k": 1}}, None)
    parts = [_request(1, b"a", extra), _request(2, b""), _request(3, big), _request(4, b"x")]
    data = b"".join(parts)
    r, w = os.pipe()
    try:
        # Cut inside a fixed header, inside a request id, and send two requests in one piece.
        writer = threading.Thread(target=_write_in_pieces, args=(w, data, [3, 20, 40]))
        writer.start()
        reader = channel.RequestReader(r)
        got = [reader.read() for _ in range(4)]
        writer.join()
        os.close(w)
        assert reader.read() is None
    finally:
        os.close(r)
    assert got == [
        ("r-1", 101.0, {"client_context": {"custom": {"k": 1}}}, b"a"),
        ("r-2", 102.0, None, b""),
        ("r-3", 103.0, None, big),
        ("r-4", 104.0, None, b"x"),
    ]


def test_request_reader_refuses_a_stream_that_ends_inside_a_request() -> None:
    r, w = os.pipe()
    try:
        channel.write_all(w, _request(1, b"body")[:-2])
        os.close(w)
        with pytest.raises(channel.ChannelError, match="inside a request"):
            channel.RequestReader(r).read()
    finally:
        os.close(r)


def test_answer_parser_takes_whole_split_and_joined_answers() -> None:
    one = channel.encode_answer(channel.OK, 1.5, None, 0, 2048, b"null")
    two = channel.encode_answer(channel.ERROR, 2.5, 30.25, 17, 4096, b'{"errorType":"E"}')
    parser = channel.AnswerParser()
    assert parser.feed(one) == [(channel.OK, 1.5, None, 0, 2048, b"null")]
    both = one + two
    assert parser.feed(both[:5]) == []
    assert parser.feed(both[5 : len(one) + 3]) == [parser_answer(one)]
    assert parser.feed(both[len(one) + 3 :]) == [
        (channel.ERROR, 2.5, 30.25, 17, 4096, b'{"errorType":"E"}')
    ]
    assert parser.feed(one + one) == [parser_answer(one), parser_answer(one)]


def parser_answer(data: bytes) -> channel.Answer:
    (answer,) = channel.AnswerParser().feed(data)
    return answer


class CountingLog:
    def __init__(self, text: str) -> None:
        self._text = text
        self.calls = 0

    def text(self) -> str:
        self.calls += 1
        return self._text


def test_logs_are_built_once_on_first_read_and_keep_the_tail() -> None:
    source = CountingLog("x" * 10 + "y" * LOG_TAIL)
    result = InvocationResult("r", b"null", logs=source)
    assert source.calls == 0
    assert result.logs == "y" * LOG_TAIL
    assert result.logs == "y" * LOG_TAIL
    assert source.calls == 1
    with pytest.raises(AttributeError):
        result.payload = b"other"  # type: ignore[misc]
    assert InvocationResult("r", b"1", logs="plain").logs == "plain"


def test_invocation_log_text_has_lambda_lines() -> None:
    text = InvocationLog("rid", b"hello\n", 1.234, 2, 128, 40, 7.5).text()
    assert text.startswith("START RequestId: rid Version: $LATEST\nhello\nEND RequestId: rid\n")
    assert text.endswith(
        "REPORT RequestId: rid\tDuration: 1.23 ms\tBilled Duration: 2 ms\tMemory Size: 128 MB"
        "\tMax Memory Used: 40 MB\tInit Duration: 7.50 ms\t\n"
    )


def test_log_files_are_written_behind_in_order(run, tmp_path: Path) -> None:
    async def body() -> None:
        files = LogFiles(tmp_path, delay=0.05)
        files.add("f", "one\n")
        files.add("f", CountingLog("two\n"))
        files.add("g", "other\n")
        assert not (tmp_path / "f.log").exists(), "nothing is written on the invocation's path"
        await asyncio.sleep(0.2)
        assert (tmp_path / "f.log").read_text() == "one\ntwo\n"
        files.add("f", "three\n")
        files.close()  # flushes what is pending
        assert (tmp_path / "f.log").read_text() == "one\ntwo\nthree\n"
        assert (tmp_path / "g.log").read_text() == "other\n"

    run(body())


def test_request_ids_are_uuid_shaped_and_distinct() -> None:
    ids, other = RequestIds(), RequestIds()
    made = [ids.next() for _ in range(1000)] + [other.next() for _ in range(1000)]
    assert all(UUID4.match(i) for i in made)
    assert len(set(made)) == len(made)


def test_context_factory_matches_the_context_constructor() -> None:
    factory = ContextFactory(
        function_name="fn",
        memory_limit_in_mb="256",
        log_stream_name="stream",
        invoked_function_arn="arn:x",
    )
    made = factory.new("rid", 123.0, {"custom": {"a": 1}}, {"cognito_identity_id": "id"})
    built = LambdaContext(
        function_name="fn",
        memory_limit_in_mb="256",
        log_stream_name="stream",
        aws_request_id="rid",
        deadline=123.0,
        invoked_function_arn="arn:x",
        client_context={"custom": {"a": 1}},
        identity={"cognito_identity_id": "id"},
    )
    for name in LambdaContext.__slots__:
        if name not in ("identity", "client_context"):
            assert getattr(made, name) == getattr(built, name), name
    assert made.identity.cognito_identity_id == "id"
    assert made.client_context is not None and made.client_context.custom == {"a": 1}
    assert factory.new("r2", 1.0).client_context is None


def test_stop_idle_makes_the_next_invocation_cold(run) -> None:
    async def body() -> None:
        runtime = await started("basic.py")
        try:
            first = await runtime.invoke("echo", b"{}")
            warm = await runtime.invoke("echo", b"{}")
            assert first.cold and not warm.cold
            assert runtime.stop_idle("echo") == 1
            again = await runtime.invoke("echo", b"{}")
            assert again.cold and again.init_duration_ms is not None
            pids = {orjson.loads(r.payload)["pid"] for r in (first, warm, again)}
            assert len(pids) == 2
        finally:
            await runtime.close()

    run(body())


def test_a_warm_environment_starts_each_log_empty(run) -> None:
    async def body() -> None:
        runtime = await started("basic.py")
        try:
            first = await runtime.invoke("echo", b'{"k": 1}')
            second = await runtime.invoke("echo", b'{"k": 2}')
            assert not second.cold
            assert "echo got {'k': 1}" in first.logs
            assert "echo got {'k': 2}" in second.logs and "'k': 1" not in second.logs
        finally:
            await runtime.close()

    run(body())
