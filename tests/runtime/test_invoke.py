"""Handlers that behave: results, context, environment, errors, logs, warm reuse."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from sluice.errors import FunctionNotFound, InvalidPayload
from tests.runtime.conftest import descendants, started

REPORT = re.compile(
    r"REPORT RequestId: (?P<id>[-\w]+)\tDuration: \d+\.\d\d ms\tBilled Duration: \d+ ms\t"
    r"Memory Size: (?P<mem>\d+) MB\tMax Memory Used: (?P<used>\d+) MB"
    r"(?:\tInit Duration: (?P<init>\d+\.\d\d) ms)?\t\n$"
)


def test_sync_handler_result_and_warm_reuse(run, tmp_path: Path) -> None:
    async def body() -> None:
        runtime = await started("basic.py", tmp_path)
        try:
            first = await runtime.invoke("echo", b'{"a": [1, 2]}')
            second = await runtime.invoke("echo", b'{"a": 3}')
            status = runtime.status()["echo"]
        finally:
            await runtime.close()
        assert first.ok and second.ok
        one, two = orjson.loads(first.payload), orjson.loads(second.payload)
        assert one["event"] == {"a": [1, 2]} and two["event"] == {"a": 3}
        assert one["pid"] == two["pid"], "a warm environment is reused"
        assert first.cold and first.init_duration_ms is not None and first.init_duration_ms > 0
        assert not second.cold and second.init_duration_ms is None
        assert status["warm"] == 1 and status["busy"] == 0 and status["cold_starts"] == 1

    run(body())


def test_async_handler_reuses_one_loop(run) -> None:
    async def body() -> None:
        runtime = await started("basic.py")
        try:
            results = [await runtime.invoke("async_echo", b'{"n": 1}') for _ in range(2)]
        finally:
            await runtime.close()
        one, two = (orjson.loads(r.payload) for r in results)
        assert one["event"] == {"n": 1}
        assert one["pid"] == two["pid"] and one["loop"] == two["loop"]

    run(body())


def test_context_attributes(run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_REGION", "eu-test-1")

    async def body() -> None:
        runtime = await started("basic.py")
        try:
            result = await runtime.invoke(
                "context_info",
                b"{}",
                request_id="req-1",
                client_context={"custom": {"k": "v"}},
                identity={"cognito_identity_id": "id-1"},
            )
        finally:
            await runtime.close()
        ctx = orjson.loads(result.payload)
        assert ctx["function_name"] == "context_info"
        assert ctx["function_version"] == "$LATEST"
        assert ctx["invoked_function_arn"] == (
            "arn:aws:lambda:eu-test-1:000000000000:function:context_info"
        )
        assert ctx["memory_limit_in_mb"] == "128"
        assert ctx["aws_request_id"] == "req-1" == result.request_id
        assert ctx["log_group_name"] == "/aws/lambda/context_info"
        assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[\$LATEST\][0-9a-f]{32}", ctx["log_stream_name"])
        assert 6000 < ctx["remaining"] <= 7000
        assert ctx["identity_id"] == "id-1"
        assert ctx["client_custom"] == {"k": "v"}

    run(body())


def test_lambda_and_function_environment_variables(run) -> None:
    async def body() -> None:
        runtime = await started("basic.py")
        try:
            env = orjson.loads((await runtime.invoke("environ", b"{}")).payload)
        finally:
            await runtime.close()
        assert env["GREETING"] == "hello"
        assert env["AWS_LAMBDA_FUNCTION_NAME"] == "environ"
        assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
        assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
        assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/environ"
        assert env["AWS_LAMBDA_LOG_STREAM_NAME"].endswith(tuple("0123456789abcdef"))
        assert env["AWS_REGION"]
        assert env["_HANDLER"] == "basic.environ"

    run(body())


def test_handler_error_has_lambda_shape(run) -> None:
    async def body() -> None:
        runtime = await started("basic.py")
        try:
            result = await runtime.invoke("fail", b'{"x": 1}', request_id="r-err")
            again = await runtime.invoke("fail", b"{}")
        finally:
            await runtime.close()
        assert result.function_error == "Unhandled" and not result.ok
        error = result.error()
        assert error is not None
        assert error["errorType"] == "ValueError"
        assert error["errorMessage"] == "bad input: {'x': 1}"
        assert error["requestId"] == "r-err"
        assert len(error["stackTrace"]) == 1, "runtime frames are not shown"
        assert 'basic.py", line' in error["stackTrace"][0] and "in fail" in error["stackTrace"][0]
        assert "[ERROR] ValueError: bad input" in result.logs
        assert not again.cold, "a handler error does not cost the environment"

    run(body())


def test_unserialisable_result_is_a_marshal_error(run) -> None:
    async def body() -> None:
        runtime = await started("basic.py")
        try:
            result = await runtime.invoke("unserialisable", b"{}")
        finally:
            await runtime.close()
        error = result.error()
        assert result.function_error == "Unhandled" and error is not None
        assert error["errorType"] == "Runtime.MarshalError"
        assert error["errorMessage"].startswith("Unable to marshal response:")

    run(body())


def test_logs_are_per_invocation_with_start_end_report(run, tmp_path: Path) -> None:
    async def body() -> None:
        runtime = await started("basic.py", tmp_path)
        try:
            first = await runtime.invoke("chatty", b'{"n": 1}', request_id="r1")
            second = await runtime.invoke("chatty", b'{"n": 2}', request_id="r2")
        finally:
            await runtime.close()
        for result, n in ((first, 1), (second, 2)):
            lines = result.logs.splitlines(keepends=True)
            assert lines[0] == f"START RequestId: r{n} Version: $LATEST\n"
            assert lines[-2] == f"END RequestId: r{n}\n"
            report = REPORT.match(lines[-1])
            assert report and report["id"] == f"r{n}" and report["mem"] == "128"
            assert int(report["used"]) > 0
            body = "".join(lines[1:-2])
            assert f"to stdout {n}\n" in body and f"to stderr {n}\n" in body
            assert f"from a subprocess {n}\n" in body
            assert re.search(rf"\[WARNING\]\t\S+Z\tr{n}\ta warning {n}\n", body)
            assert f" {3 - n}\n" not in body, "no output of the other invocation"
        assert REPORT.match(first.logs.splitlines(keepends=True)[-1])["init"]  # type: ignore[index]
        assert REPORT.match(second.logs.splitlines(keepends=True)[-1])["init"] is None  # type: ignore[index]
        assert first.billed_duration_ms >= first.duration_ms + first.init_duration_ms  # type: ignore[operator]
        on_disk = (tmp_path / "chatty.log").read_text()
        assert on_disk == first.logs + second.logs

    run(body())


def test_unknown_function_and_invalid_payload(run) -> None:
    async def body() -> None:
        runtime = await started("basic.py")
        try:
            with pytest.raises(FunctionNotFound):
                await runtime.invoke("nope", b"{}")
            with pytest.raises(InvalidPayload):
                await runtime.invoke("echo", b"{not json")
            empty = await runtime.invoke("echo", b"")
        finally:
            await runtime.close()
        assert orjson.loads(empty.payload)["event"] == {}

    run(body())


def test_close_leaves_no_processes(run) -> None:
    before = descendants()

    async def body() -> None:
        runtime = await started("basic.py")
        for name in ("echo", "async_echo", "chatty"):
            await runtime.invoke(name, b'{"n": 0}')
        assert len(descendants() - before) >= 4  # the template and three environments
        await runtime.close()

    run(body())
    assert descendants() - before == set()
