"""Every target through a real gateway: sync and async functions, queues (with back-pressure),
reverse proxy, fixed responses and redirects, ALB rules, CORS, OpenAPI, health and logs."""

from __future__ import annotations

import asyncio
import base64
import http.server
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sluice.app import App, FixedResponse, Redirect
from sluice.dispatch.async_invoke import async_queue_name
from sluice.gateway import GatewayConfig
from tests.gateway.harness import GatewayThread, request


class Upstream(http.server.BaseHTTPRequestHandler):
    """A real HTTP server to proxy to: echoes, streams chunked, stalls, or answers HEAD."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.endswith("/stream"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-Upstream", "yes")
            self.end_headers()
            for i in range(3):
                part = f"part{i};".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.endswith("/stall"):
            time.sleep(1.5)
        self._echo()

    def do_POST(self) -> None:
        self._echo()

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = orjson.dumps(
            {
                "path": self.path,
                "method": self.command,
                "body": self.rfile.read(length).decode(),
                "host": self.headers.get("Host"),
                "xff": self.headers.get("X-Forwarded-For"),
                "connection": self.headers.get("Connection"),
            }
        )
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def make_app(upstream: int) -> App:
    app = App("targets")
    app.queue("inbox")
    app.queue("small", max_backlog=2)
    app.queue("orders.fifo", content_based_deduplication=True)

    @app.route("GET /items/{id}")
    @app.route("ANY /echo/{proxy+}")
    def echo(event: dict[str, Any], context: object) -> dict[str, Any]:
        return {
            "statusCode": 200,
            "headers": {"content-type": "application/json", "x-handler": "echo"},
            "cookies": ["a=1", "b=2"],
            "body": orjson.dumps(event).decode(),
        }

    @app.route("GET /plain")
    def plain(event: dict[str, Any], context: object) -> list[int]:
        return [1, 2, 3]  # not a proxy response: sent as JSON with 200

    @app.route("GET /boom")
    def boom(event: dict[str, Any], context: object) -> None:
        raise RuntimeError("secret detail")

    @app.route("GET /bad-response")
    def bad_response(event: dict[str, Any], context: object) -> dict[str, Any]:
        return {"statusCode": "two hundred"}

    @app.route("GET /injected")
    def injected(event: dict[str, Any], context: object) -> dict[str, Any]:
        return {"statusCode": 200, "headers": {"x-a": "1\r\nSet-Cookie: evil=1"}}

    @app.route("GET /slow", timeout=0.3)
    async def slow(event: dict[str, Any], context: object) -> dict[str, Any]:
        await asyncio.sleep(2)
        return {"statusCode": 200}

    app.function(name="gated", reserved_concurrency=1)(_gated)
    app.add_route("GET /gated", "function:gated")

    @app.route("POST /jobs", to="async")
    @app.route("POST /jobs-quick", to="async", timeout=0.5)
    def job(event: dict[str, Any], context: object) -> None:
        return None

    app.add_route("POST /inbox", "queue:inbox", forward_headers=("x-trace", "content-type"))
    app.add_route("POST /small", "queue:small")
    app.add_route("POST /inbox-quick", "queue:inbox", timeout=0.5)
    app.add_route("POST /small-quick", "queue:small", timeout=0.5)
    app.add_route("POST /orders", "queue:orders.fifo")
    app.add_route("ANY /up/{proxy+}", f"proxy:http://127.0.0.1:{upstream}/base")
    app.add_route("GET /stall", f"proxy:http://127.0.0.1:{upstream}/stall", timeout=0.5)
    app.add_route("GET /down", "proxy:http://127.0.0.1:1/")
    app.add_route("GET /maintenance", FixedResponse(503, '{"down":true}', "application/json"))
    app.add_route("GET /old/{x}", Redirect(301, path="/new/#{path}", query="from=old&#{query}"))

    @app.rule(10, host="alb.example.com", path="/lb/*", multi_value_headers=True)
    def lb(event: dict[str, Any], context: object) -> dict[str, Any]:
        return {
            "statusCode": 418,
            "statusDescription": "418 Short And Stout",
            "multiValueHeaders": {"x-seen": [event["httpMethod"], event["path"]]},
            "body": orjson.dumps(event["multiValueQueryStringParameters"]).decode(),
        }

    app.rule(20, to=FixedResponse(403, "go away"), source_ip="203.0.113.0/24")
    app.rule(None, to=FixedResponse(404, "nothing here"))
    app.cors(
        allow_origins=("https://app.example.com",),
        allow_methods=("GET", "POST"),
        allow_headers=("content-type", "x-trace"),
        expose_headers=("apigw-requestid",),
        max_age=600,
    )
    return app


_gate = threading.Event()


def _gated(event: dict[str, Any], context: object) -> dict[str, Any]:
    _gate.wait(5)
    return {"statusCode": 200, "body": "through"}


@pytest.fixture
def gw(tmp_path: Path, upstream: int) -> Iterator[GatewayThread]:
    with GatewayThread(make_app(upstream), tmp_path, GatewayConfig(retry_after=2)) as g:
        yield g


def error_of(reply: Any) -> str:
    return str(reply.json()["error"])


def test_sync_function_gets_payload_2_0_and_answers_per_proxy_contract(gw: GatewayThread) -> None:
    r = request(gw.port, "GET", "/items/42?x=1&x=2&y=%20", headers={"Cookie": "c=1; d=2"})
    assert r.status == 200
    assert r.headers["x-handler"] == "echo"
    assert r.values("set-cookie") == ["a=1", "b=2"]
    event = r.json()
    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /items/{id}"
    assert event["pathParameters"] == {"id": "42"}
    assert event["queryStringParameters"] == {"x": "1,2", "y": " "}
    assert event["cookies"] == ["c=1", "d=2"]
    assert event["requestContext"]["requestId"] == r.headers["apigw-requestid"]
    assert event["requestContext"]["http"]["sourceIp"] == "127.0.0.1"
    greedy = request(gw.port, "DELETE", "/echo/a/b").json()
    assert greedy["pathParameters"] == {"proxy": "a/b"}
    plain = request(gw.port, "GET", "/plain")
    assert (plain.status, plain.json()) == (200, [1, 2, 3])


def test_function_failures_are_502_without_leaking_the_message(gw: GatewayThread) -> None:
    r = request(gw.port, "GET", "/boom")
    assert r.status == 502 and error_of(r) == "FunctionError"
    assert "RuntimeError" in r.json()["message"] and "secret" not in r.json()["message"]
    r = request(gw.port, "GET", "/bad-response")
    assert r.status == 502 and "statusCode" in r.json()["message"]
    r = request(gw.port, "GET", "/injected")
    assert r.status == 502 and "evil" not in r.headers.get("set-cookie", "")


def test_integration_timeout_is_504(gw: GatewayThread) -> None:
    started = time.monotonic()
    r = request(gw.port, "GET", "/slow")
    assert r.status == 504 and error_of(r) == "IntegrationTimeout"
    assert time.monotonic() - started < 1.5


def test_function_at_reserved_concurrency_is_429_with_retry_after(gw: GatewayThread) -> None:
    _gate.clear()
    first: list[int] = []
    holder = threading.Thread(target=lambda: first.append(request(gw.port, "GET", "/gated").status))
    holder.start()
    try:
        deadline = time.monotonic() + 5
        while gw.invoker.running.get("gated", 0) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = request(gw.port, "GET", "/gated")
        assert r.status == 429 and error_of(r) == "TooManyRequestsException"
        assert r.headers["retry-after"] == "2"
    finally:
        _gate.set()
        holder.join(5)
    assert first == [200]


def test_async_route_is_durable_before_202(gw: GatewayThread) -> None:
    r = request(gw.port, "POST", "/jobs?k=v", b'{"n": 1}')
    assert r.status == 202
    request_id = r.json()["requestId"]
    assert request_id == r.headers["apigw-requestid"]  # the invocation's id is the request's
    [message] = gw.run(gw.broker.receive(async_queue_name("job"), 10))  # type: ignore[union-attr]
    assert message.attributes["RequestId"]["StringValue"] == request_id
    event = orjson.loads(message.body)
    assert event["routeKey"] == "POST /jobs" and event["body"] == '{"n": 1}'


def test_queue_route_stores_body_and_chosen_headers(gw: GatewayThread) -> None:
    r = request(gw.port, "POST", "/inbox", b"hello", {"X-Trace": "t-1", "X-Other": "no"})
    assert r.status == 202
    binary = request(gw.port, "POST", "/inbox", b"\xff\x00\xfe")
    assert binary.status == 202
    messages = gw.run(gw.broker.receive("inbox", 10))  # type: ignore[union-attr]
    by_id = {m.message_id: m for m in messages}
    text = by_id[r.json()["messageId"]]
    assert text.body == "hello"
    assert text.attributes == {"x-trace": {"DataType": "String", "StringValue": "t-1"}}
    raw = by_id[binary.json()["messageId"]]
    assert base64.b64decode(raw.body) == b"\xff\x00\xfe"
    assert raw.attributes["sluice-body-encoding"]["StringValue"] == "base64"


def test_queue_over_its_backlog_answers_429_and_recovers(gw: GatewayThread) -> None:
    assert request(gw.port, "POST", "/small", b"1").status == 202
    assert request(gw.port, "POST", "/small", b"2").status == 202
    r = request(gw.port, "POST", "/small", b"3")
    assert r.status == 429 and error_of(r) == "QueueOverLimit"
    assert r.headers["retry-after"] == "2"
    messages = gw.run(gw.broker.receive("small", 10))  # type: ignore[union-attr]
    assert sorted(m.body for m in messages) == ["1", "2"]
    gw.run(gw.broker.delete("small", [m.receipt_handle for m in messages]))  # type: ignore[union-attr]
    time.sleep(0.25)  # past the backlog re-read interval
    assert request(gw.port, "POST", "/small", b"4").status == 202


def test_fifo_queue_route_needs_a_group_id(gw: GatewayThread) -> None:
    r = request(gw.port, "POST", "/orders", b"x")
    assert r.status == 400 and "x-message-group-id" in r.json()["message"]
    r = request(gw.port, "POST", "/orders", b"x", {"X-Message-Group-Id": "g1"})
    assert r.status == 202


def test_broker_down_is_503_and_not_ready(gw: GatewayThread) -> None:
    assert request(gw.port, "GET", "/_sluice/ready").status == 200
    gw.run(gw.broker.close())  # type: ignore[union-attr]
    r = request(gw.port, "POST", "/inbox", b"lost?")
    assert r.status == 503, r.body
    ready = request(gw.port, "GET", "/_sluice/ready")
    assert ready.status == 503 and error_of(ready) == "ServiceUnavailable"
    assert request(gw.port, "GET", "/_sluice/health").status == 200


def test_queue_route_outlives_its_send_process(gw: GatewayThread) -> None:
    """The child committing the sends is killed: a request meanwhile gets 503 (not stored as far
    as the client knows) or 202; a new child takes the next ones; every 202 is in the queue."""
    assert gw.broker is not None and gw.broker._send_process is not None
    transport = gw.broker._send_process._transport
    assert transport is not None
    acked = []
    for i in range(20):
        r = request(gw.port, "POST", "/inbox", b"before %d" % i)
        assert r.status == 202
        acked.append(r.json()["messageId"])
    os.kill(transport.get_pid(), signal.SIGKILL)
    statuses = []
    for i in range(40):
        r = request(gw.port, "POST", "/inbox", b"after %d" % i)
        statuses.append(r.status)
        if r.status == 202:
            acked.append(r.json()["messageId"])
        else:
            assert r.status == 503 and error_of(r) == "ServiceUnavailable"
            assert "retry-after" in r.headers
    assert statuses[-10:] == [202] * 10  # a new child took over

    async def stored() -> set[str]:
        assert gw.broker is not None
        ids: set[str] = set()
        while batch := await gw.broker.receive("inbox", 10):
            ids.update(m.message_id for m in batch)
            await gw.broker.delete("inbox", [m.receipt_handle for m in batch])
        return ids

    assert set(acked) <= gw.run(stored())


def test_a_stalled_send_is_504_at_the_integration_timeout(gw: GatewayThread) -> None:
    """The process committing the sends stops answering (SIGSTOP: a hung disk looks the same):
    queue and async routes answer 504 at their integration timeout instead of holding the
    request, on the callback path (/inbox-quick, /jobs-quick) and on the coroutine path that a
    backlog limit takes (/small-quick). What they carried is stored once the child goes on: the
    504 says the outcome is unknown, and here it is 'stored'."""
    assert gw.broker is not None and gw.broker._send_process is not None
    assert request(gw.port, "POST", "/inbox", b"warm").status == 202
    transport = gw.broker._send_process._transport
    assert transport is not None
    os.kill(transport.get_pid(), signal.SIGSTOP)
    try:
        for path in ("/inbox-quick", "/jobs-quick", "/small-quick"):
            started = time.monotonic()
            r = request(gw.port, "POST", path, b"stalled %s" % path.encode())
            assert r.status == 504 and error_of(r) == "IntegrationTimeout", (path, r.body)
            assert "whether it will be is unknown" in r.json()["message"]
            assert 0.5 <= time.monotonic() - started < 3.0
    finally:
        os.kill(transport.get_pid(), signal.SIGCONT)
    assert request(gw.port, "POST", "/inbox-quick", b"after").status == 202

    async def bodies(queue: str) -> list[str]:
        assert gw.broker is not None
        return [m.body for m in await gw.broker.receive(queue, 10)]

    assert sorted(gw.run(bodies("inbox"))) == ["after", "stalled /inbox-quick", "warm"]
    assert gw.run(bodies("small")) == ["stalled /small-quick"]
    [job] = gw.run(gw.broker.receive(async_queue_name("job"), 10))
    assert orjson.loads(job.body)["body"] == "stalled /jobs-quick"


def test_reverse_proxy_forwards_and_streams(gw: GatewayThread, upstream: int) -> None:
    r = request(gw.port, "POST", "/up/a/b?q=1", b"payload", {"X-Forwarded-For": "1.2.3.4"})
    assert r.status == 201
    seen = r.json()
    assert seen["path"] == "/base/up/a/b?q=1"
    assert seen["body"] == "payload"
    assert seen["host"] == f"127.0.0.1:{upstream}"
    assert seen["xff"] == "1.2.3.4, 127.0.0.1"
    streamed = request(gw.port, "GET", "/up/stream")
    assert (streamed.status, streamed.body) == (200, b"part0;part1;part2;")
    assert streamed.headers["x-upstream"] == "yes"
    assert streamed.headers["transfer-encoding"] == "chunked"


def test_reverse_proxy_failures(gw: GatewayThread) -> None:
    r = request(gw.port, "GET", "/stall")
    assert r.status == 504 and error_of(r) == "IntegrationTimeout"
    r = request(gw.port, "GET", "/down")
    assert r.status == 502 and error_of(r) == "BadGateway"


def test_fixed_response_and_redirect(gw: GatewayThread) -> None:
    r = request(gw.port, "GET", "/maintenance")
    assert (r.status, r.json(), r.headers["content-type"]) == (
        503,
        {"down": True},
        "application/json",
    )
    r = request(gw.port, "GET", "/old/thing?a=b", headers={"Host": "shop.example.com:8080"})
    assert r.status == 301
    assert r.headers["location"] == "http://shop.example.com:8080/new/old/thing?from=old&a=b"


def test_alb_rules_take_precedence_then_routes_then_default(gw: GatewayThread) -> None:
    r = request(gw.port, "GET", "/lb/x?a=1&a=2", headers={"Host": "ALB.example.com", "X-T": "1"})
    assert r.status == 418
    assert r.json() == {"a": ["1", "2"]}
    assert r.values("x-seen") == ["GET", "/lb/x"]
    assert r.reason == "Short And Stout"
    assert request(gw.port, "GET", "/lb/x").status == 404  # other host: no rule, no route
    assert request(gw.port, "GET", "/nowhere").body == b"nothing here"  # the default rule


def test_cors_preflight_and_response_headers(gw: GatewayThread) -> None:
    pre = request(
        gw.port,
        "OPTIONS",
        "/items/1",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-trace",
        },
    )
    assert pre.status == 204
    assert pre.headers["access-control-allow-origin"] == "https://app.example.com"
    assert pre.headers["access-control-allow-methods"] == "GET,POST"
    assert pre.headers["access-control-allow-headers"] == "content-type,x-trace"
    assert pre.headers["access-control-max-age"] == "600"
    denied = request(
        gw.port,
        "OPTIONS",
        "/items/1",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert denied.status == 204 and "access-control-allow-origin" not in denied.headers
    r = request(gw.port, "GET", "/items/1", headers={"Origin": "https://app.example.com"})
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"
    assert r.headers["access-control-expose-headers"] == "apigw-requestid"


def test_openapi_health_and_unknown_internal_paths(gw: GatewayThread) -> None:
    doc = request(gw.port, "GET", "/_sluice/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    op = doc["paths"]["/items/{id}"]["get"]
    assert op["parameters"] == [
        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    assert "202" in doc["paths"]["/inbox"]["post"]["responses"]
    assert "x-amazon-apigateway-any-method" in doc["paths"]["/echo/{proxy+}"]
    assert request(gw.port, "GET", "/_sluice/health").json() == {"status": "ok"}
    assert request(gw.port, "GET", "/_sluice/nope").status == 404


def test_one_json_access_log_line_per_request(
    gw: GatewayThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sluice.gateway.access")
    ok = request(gw.port, "GET", "/items/7")
    bad = request(gw.port, "GET", "/boom")
    time.sleep(0.05)
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name.endswith("access")]
    assert [(x["path"], x["status"]) for x in lines] == [("/items/7", 200), ("/boom", 502)]
    assert lines[0]["requestId"] == ok.headers["apigw-requestid"]
    assert lines[0]["routeKey"] == "GET /items/{id}"
    assert lines[1]["error"] == "FunctionError"
    assert lines[1]["requestId"] == bad.headers["apigw-requestid"]


def test_queue_and_async_routes_are_logged_and_decorated_once_answered(
    gw: GatewayThread, caplog: pytest.LogCaptureFixture
) -> None:
    """With CORS or the access log on, an answer that comes later (the send process's) still
    gets both, its 202 or its error."""
    caplog.set_level(logging.INFO, logger="sluice.gateway.access")
    origin = {"Origin": "https://app.example.com"}
    sent = request(gw.port, "POST", "/inbox", b"logged", origin)
    job = request(gw.port, "POST", "/jobs", b'{"n": 2}', origin)
    refused = request(gw.port, "POST", "/inbox", b"x" * 300_000, origin)  # over 256 KiB
    time.sleep(0.05)
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name.endswith("access")]
    assert [(x["path"], x["status"]) for x in lines] == [
        ("/inbox", 202),
        ("/jobs", 202),
        ("/inbox", 413),
    ]
    assert error_of(refused) == lines[2]["error"] == "MessageTooLarge"
    for reply in (sent, job, refused):
        assert reply.headers["access-control-allow-origin"] == "https://app.example.com"
