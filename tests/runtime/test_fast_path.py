"""The warm path's parts: whole-frame parsing, the environment's socket reader, lazy logs,
log files written behind, request ids, contexts, and stopping idle environments."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from pathlib import Path

import orjson
import pytest

from sluice.runtime import wire
from sluice.runtime.context import ContextFactory, LambdaContext, RequestIds
from sluice.runtime.contract import LOG_TAIL, InvocationResult
from sluice.runtime.logfiles import LogFiles
from sluice.runtime.reports import InvocationLog
from tests.runtime.conftest import started

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_whole_parses_exactly_one_frame_and_nothing_else() -> None:
    frame = wire.encode({"op": "x"}, b"body")
    assert wire.whole(frame) == ({"op": "x"}, b"body")
    assert wire.whole(frame[:-1]) is None
    assert wire.whole(frame + frame) is None
    assert wire.whole(frame[:5]) is None


def _send_in_pieces(sock: socket.socket, data: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in [*cuts, len(data)]:
        sock.sendall(data[start:cut])
        start = cut


def test_socket_reader_handles_split_joined_and_large_frames() -> None:
    big = bytes(range(256)) * (3 * wire.RECV_SIZE // 256 + 7)  # spans several reads
    frames = [({"n": 1}, b"a"), ({"n": 2}, b""), ({"n": 3}, big), ({"n": 4}, b"tail")]
    data = b"".join(wire.encode(h, b) for h, b in frames)
    a, b = socket.socketpair()
    with a, b:
        # Cut inside a prefix, inside a header, and send two frames in one piece.
        writer = threading.Thread(target=_send_in_pieces, args=(a, data, [3, 14, 40]))
        writer.start()
        reader = wire.SocketReader(b)
        got = [reader.read() for _ in frames]
        writer.join()
        a.shutdown(socket.SHUT_WR)
        assert reader.read() is None
    assert got == frames


def test_socket_reader_refuses_a_stream_that_ends_inside_a_frame() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(wire.encode({"n": 1}, b"body")[:-2])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(wire.WireError, match="inside a frame"):
            wire.SocketReader(b).read()


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
