"""The server's three kinds of answer: a `Response` at once, a future settled later (no task), a
coroutine (a task). Each kind's failures, and the order of pipelined answers mixing them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator

import orjson
import pytest
import uvloop

from sluice.errors import Unavailable
from sluice.gateway import GatewayConfig
from sluice.gateway.server import HttpServer
from sluice.gateway.wire import Request, Response
from tests.gateway.harness import raw, request


def text(body: str) -> Response:
    return Response(200, [(b"content-type", b"text/plain")], body.encode())


def handler(request: Request) -> Response | Awaitable[Response]:
    loop = asyncio.get_running_loop()
    path = request.path
    if path == "/now":
        return text("now")
    if path == "/raise-now":
        raise RuntimeError("a bug")
    if path == "/refuse-now":
        raise Unavailable("down for now")
    if path == "/later":
        future: asyncio.Future[Response] = loop.create_future()
        loop.call_later(0.05, future.set_result, text("later"))
        return future
    if path == "/later-refused":
        refused: asyncio.Future[Response] = loop.create_future()
        loop.call_later(0.05, refused.set_exception, Unavailable("the broker went away"))
        return refused
    if path == "/later-bug":
        broken: asyncio.Future[Response] = loop.create_future()
        loop.call_later(0.05, broken.set_exception, KeyError("oops"))
        return broken

    async def coroutine() -> Response:
        await asyncio.sleep(0.02)
        if path == "/task-bug":
            raise ValueError("a bug in a coroutine")
        return text("task")

    return coroutine()


@pytest.fixture
def port() -> Iterator[int]:
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = HttpServer(GatewayConfig(access_log=False, retry_after=7), handler)
    asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(10)
    try:
        yield server.port
    finally:
        asyncio.run_coroutine_threadsafe(server.close(1), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize(
    "path, status, body",
    [
        ("/now", 200, b"now"),
        ("/later", 200, b"later"),
        ("/task", 200, b"task"),
    ],
)
def test_each_kind_of_answer(port: int, path: str, status: int, body: bytes) -> None:
    r = request(port, "GET", path)
    assert (r.status, r.body) == (status, body)
    assert r.headers["apigw-requestid"]


@pytest.mark.parametrize(
    "path, status, code",
    [
        ("/raise-now", 500, "InternalError"),
        ("/refuse-now", 503, "ServiceUnavailable"),
        ("/later-refused", 503, "ServiceUnavailable"),
        ("/later-bug", 500, "InternalError"),
        ("/task-bug", 500, "InternalError"),
    ],
)
def test_failures_of_each_kind_are_json_errors(
    port: int, path: str, status: int, code: str
) -> None:
    r = request(port, "GET", path)
    assert r.status == status
    assert orjson.loads(r.body)["error"] == code
    if status == 503:
        assert r.headers["retry-after"] == "7"
    # The connection and the server go on: the next request is answered.
    assert request(port, "GET", "/now").status == 200


def test_pipelined_answers_keep_their_order_across_kinds(port: int) -> None:
    data = raw(
        port,
        b"GET /later HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /now HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /task HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /later-refused HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /now HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert [a.split(b" ", 1)[0] for a in answers] == [b"200", b"200", b"200", b"503", b"200"]
    assert [a.rsplit(b"\r\n\r\n", 1)[1][:5] for a in answers[:3]] == [b"later", b"now", b"task"]
