"""The hardened HTTP server, over raw sockets: smuggling forms, size limits, deadlines,
keep-alive limits, the connection cap, pipelining and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sluice.app import App, FixedResponse
from sluice.gateway import GatewayConfig
from tests.gateway.harness import GatewayThread, parse_response, raw, read_all, request

LIMITS = GatewayConfig(
    max_body=1000,
    max_header_bytes=2048,
    max_headers=20,
    max_url=512,
    request_deadline=1.0,
    idle_timeout=30.0,
    max_requests_per_connection=3,
    max_connections=50,
)


def make_app() -> App:
    app = App("server")
    app.add_route("GET /fast", FixedResponse(200, "fast"))
    app.add_route("HEAD /fast", FixedResponse(200, "fast"))

    @app.route("POST /echo")
    def echo(event: dict[str, Any], context: object) -> dict[str, Any]:
        return {"statusCode": 200, "body": str(len(event.get("body", "")))}

    @app.route("GET /big")
    def big(event: dict[str, Any], context: object) -> dict[str, Any]:
        return {"statusCode": 200, "body": "b" * 4_000_000}

    @app.route("GET /slow")
    async def slow(event: dict[str, Any], context: object) -> dict[str, Any]:
        await asyncio.sleep(0.5)
        return {"statusCode": 200, "body": "slow"}

    return app


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayThread]:
    with GatewayThread(make_app(), tmp_path, LIMITS) as g:
        yield g


def assert_rejected(data: bytes, status: int, code: str) -> dict[str, str]:
    got, headers, body = parse_response(data)
    assert got == status, data
    assert orjson.loads(body)["error"] == code
    assert headers["connection"] == "close"
    assert headers["apigw-requestid"]
    return headers


SMUGGLING = {
    "content-length and transfer-encoding": b"POST /echo HTTP/1.1\r\nHost: a\r\n"
    b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate content-length": b"POST /echo HTTP/1.1\r\nHost: a\r\n"
    b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "content-length list": b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
    "negative content-length": b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "bad chunk size": b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n",
    "chunk without crlf": b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabcX0\r\n\r\n",
    "transfer-encoding other than chunked": b"POST /echo HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "two transfer-encoding headers": b"POST /echo HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding on HTTP/1.0": b"POST /echo HTTP/1.0\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bare LF": b"GET /fast HTTP/1.1\nHost: a\n\n",
    "bare LF in a header": b"GET /fast HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
    "obsolete line folding": b"GET /fast HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n",
    "space before colon": b"GET /fast HTTP/1.1\r\nHost : a\r\n\r\n",
    "missing host": b"GET /fast HTTP/1.1\r\n\r\n",
    "two hosts": b"GET /fast HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
}


@pytest.mark.parametrize("name", list(SMUGGLING))
def test_smuggling_forms_get_400_and_the_connection_closes(gw: GatewayThread, name: str) -> None:
    # Anything after the bad request must never be served as a second request.
    data = raw(gw.port, SMUGGLING[name] + b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
    assert data.count(b"apigw-requestid") == 1
    assert_rejected(data, 400, "BadRequest")


def test_body_over_the_limit_is_refused_on_content_length_before_it_is_sent(
    gw: GatewayThread,
) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 7000000\r\n\r\n")
        assert_rejected(read_all(s), 413, "RequestEntityTooLarge")


def test_chunked_body_over_the_limit_is_refused_while_streaming(gw: GatewayThread) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):  # 3 x 400 bytes: over the 1000-byte limit, and never terminated
            s.sendall(b"190\r\n" + b"x" * 400 + b"\r\n")
        assert_rejected(read_all(s), 413, "RequestEntityTooLarge")


def test_body_within_the_limit_is_delivered_whole_chunked_or_not(gw: GatewayThread) -> None:
    assert request(gw.port, "POST", "/echo", b"y" * 1000).body == b"1000"
    chunked = (
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
        b"\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
    )
    status, _, body = parse_response(raw(gw.port, chunked))
    assert (status, body) == (200, b"11")


def test_header_url_and_count_limits(gw: GatewayThread) -> None:
    big = b"GET /fast HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 3000 + b"\r\n\r\n"
    assert_rejected(raw(gw.port, big), 431, "RequestHeaderFieldsTooLarge")
    many = b"GET /fast HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(25))
    assert_rejected(raw(gw.port, many + b"\r\n"), 431, "RequestHeaderFieldsTooLarge")
    url = b"GET /fast?" + b"q" * 600 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    assert_rejected(raw(gw.port, url), 414, "UriTooLong")


def test_endless_header_without_terminator_is_cut_at_the_limit(gw: GatewayThread) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /fast HTTP/1.1\r\nHost: a\r\nX-Endless: ")
        with contextlib.suppress(OSError):  # the server may refuse before we are done
            for _ in range(5):
                s.sendall(b"v" * 1000)  # never a CRLF
        assert_rejected(read_all(s), 431, "RequestHeaderFieldsTooLarge")


def test_expect_100_continue(gw: GatewayThread) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\n\r\n"
        )
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"abc")
        status, _, body = parse_response(read_all(s))
        assert (status, body) == (200, b"3")
    refused = raw(
        gw.port,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    )
    assert b"100 Continue" not in refused
    assert_rejected(refused, 413, "RequestEntityTooLarge")
    odd = raw(gw.port, b"GET /fast HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n")
    assert_rejected(odd, 417, "ExpectationFailed")


def test_slow_client_is_cut_off_at_the_deadline_while_others_are_served(
    gw: GatewayThread,
) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as slow:
        started = time.monotonic()
        slow.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        served = 0
        while time.monotonic() - started < 0.8:
            assert request(gw.port, "GET", "/fast").status == 200
            served += 1
        data = read_all(slow)
        elapsed = time.monotonic() - started
    assert served > 5
    assert_rejected(data, 408, "RequestTimeout")
    assert 1.0 <= elapsed < 2.5


def test_trickling_headers_do_not_extend_the_deadline(gw: GatewayThread) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        started = time.monotonic()
        s.sendall(b"GET /fast HTTP/1.1\r\n")
        for i in range(20):  # a byte every 0.1 s keeps the connection busy but never done
            try:
                s.sendall(b"X-%d: 1\r\n" % i)
            except OSError:
                break
            time.sleep(0.1)
        data = read_all(s)
    assert_rejected(data, 408, "RequestTimeout")
    assert time.monotonic() - started < 2.5


def test_keep_alive_serves_max_requests_then_closes(gw: GatewayThread) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        for i in range(3):
            s.sendall(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
            data = b""
            while not data.endswith(b"fast"):
                data += s.recv(4096)
            status, headers, _ = parse_response(data)
            assert status == 200
            assert ("connection" in headers) == (i == 2)
        assert s.recv(10) == b""


def test_pipelined_requests_are_answered_in_order(gw: GatewayThread) -> None:
    data = raw(
        gw.port,
        b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /fast HTTP/1.1\r\nHost: a\r\n\r\n"
        b"HEAD /fast HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    first, second, third = data.split(b"HTTP/1.1 ")[1:]
    assert first.endswith(b"slow") and second.endswith(b"fast")
    assert third.endswith(b"\r\n\r\n") and b"content-length: 4" in third  # HEAD: no body


def test_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    config = GatewayConfig(idle_timeout=0.4)
    with (
        GatewayThread(make_app(), tmp_path, config) as g,
        socket.create_connection(("127.0.0.1", g.port), timeout=5) as s,
    ):
        s.sendall(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(0.1)
        assert s.recv(4096).endswith(b"fast")
        started = time.monotonic()
        assert s.recv(10) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - started < 2.0


def test_connections_over_the_cap_get_503(tmp_path: Path) -> None:
    config = GatewayConfig(max_connections=2)
    with GatewayThread(make_app(), tmp_path, config) as g:
        a = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        b = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        try:
            time.sleep(0.1)
            data = raw(g.port, b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
            headers = assert_rejected(data, 503, "ServiceUnavailable")
            assert headers["retry-after"] == "1"
        finally:
            a.close()
            b.close()
        deadline = time.monotonic() + 5
        while True:
            try:
                assert request(g.port, "GET", "/fast").status == 200
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def test_graceful_shutdown_finishes_in_flight_requests(tmp_path: Path) -> None:
    g = GatewayThread(make_app(), tmp_path)
    g.__enter__()
    results: list[int] = []
    worker = threading.Thread(target=lambda: results.append(request(g.port, "GET", "/slow").status))
    worker.start()
    time.sleep(0.2)  # the request is in flight
    port = g.port
    g.stop(grace=5.0)
    worker.join(5)
    assert results == [200]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_shutdown_grace_cuts_requests_that_take_longer(tmp_path: Path) -> None:
    g = GatewayThread(make_app(), tmp_path)
    g.__enter__()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            request(g.port, "GET", "/slow")
        except Exception as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.1)
    started = time.monotonic()
    g.stop(grace=0.1)
    worker.join(5)
    assert time.monotonic() - started < 1.0
    assert len(errors) == 1  # the client saw the connection cut, not a made-up answer


def test_client_that_stops_reading_is_cut_after_the_write_timeout(tmp_path: Path) -> None:
    config = GatewayConfig(write_timeout=0.5)
    with GatewayThread(make_app(), tmp_path, config) as g:
        assert g.gateway is not None
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            stalled.connect(("127.0.0.1", g.port))
            stalled.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")  # and never read
            time.sleep(0.3)
            assert g.gateway.connections == 1
            assert request(g.port, "GET", "/fast").status == 200  # others are served meanwhile
            deadline = time.monotonic() + 5
            while g.gateway.connections:
                assert time.monotonic() < deadline, "the stalled connection was not cut"
                time.sleep(0.05)
        finally:
            stalled.close()
