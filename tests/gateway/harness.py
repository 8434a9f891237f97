"""A real gateway on a free port, on its own event loop thread, backed by a real SQLite broker,
the real async-invoke submitter, and a small in-process invoker; plus plain-socket clients."""

from __future__ import annotations

import asyncio
import functools
import http.client
import socket
import threading
import time
from collections.abc import Coroutine, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import orjson
import uvloop

from sluice.app import App
from sluice.broker.sqlite import SQLiteBroker
from sluice.dispatch.async_invoke import async_queue_configs, submit_async
from sluice.errors import Throttled
from sluice.gateway import Gateway, GatewayConfig
from sluice.runtime.contract import InvocationResult, Invoker
from sluice.runtime.pool import Runtime

T = TypeVar("T")


class InProcessInvoker:
    """Runs an app's handlers in this process (threads for sync handlers), with Lambda's error
    object on failure and `Throttled` at a function's reserved concurrency."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.running: dict[str, int] = {}
        self.calls = 0

    async def invoke(
        self,
        function: str,
        payload: bytes,
        *,
        request_id: str | None = None,
        client_context: Mapping[str, Any] | None = None,
        identity: Mapping[str, Any] | None = None,
    ) -> InvocationResult:
        spec = self.app.get_function(function)
        assert spec.handler is not None
        busy = self.running.get(function, 0)
        if spec.reserved_concurrency is not None and busy >= spec.reserved_concurrency:
            raise Throttled(f"function {function!r} is at its reserved concurrency")
        self.calls += 1
        self.running[function] = busy + 1
        rid = request_id or "local"
        try:
            event = orjson.loads(payload)
            if spec.is_async_handler:
                value = await spec.handler(event, None)
            else:
                value = await asyncio.to_thread(spec.handler, event, None)
            return InvocationResult(rid, orjson.dumps(value))
        except Exception as exc:
            error = {"errorMessage": str(exc), "errorType": type(exc).__name__, "stackTrace": []}
            return InvocationResult(rid, orjson.dumps(error), function_error="Unhandled")
        finally:
            self.running[function] -= 1


class GatewayThread:
    """``with GatewayThread(app, tmp_path) as gw:`` serves ``app`` on ``gw.port``."""

    def __init__(
        self,
        app: App,
        data: Path,
        config: GatewayConfig | None = None,
        *,
        runtime_ref: str | None = None,
    ) -> None:
        self.app = app
        self.data = data
        self.runtime_ref = runtime_ref  # set: invoke through the real runtime, not in-process
        self.runtime: Runtime | None = None
        self.path = data / "broker.db"
        self.config = config or GatewayConfig()
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.invoker = InProcessInvoker(app)
        self.broker: SQLiteBroker | None = None
        self.gateway: Gateway | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    async def _start(self) -> None:
        # As the gateway role runs it: sends committed by the broker's send process.
        self.broker = SQLiteBroker(self.path, send_process=True)
        await self.broker.start()
        for queue in self.app.queues.values():
            await self.broker.create_queue(queue)
        for queue in async_queue_configs(self.app.functions.values()):
            await self.broker.create_queue(queue)
        submit = functools.partial(submit_async, self.broker)
        invoker: Invoker = self.invoker
        if self.runtime_ref is not None:
            self.runtime = Runtime(self.runtime_ref, self.app.functions, log_dir=self.data)
            await self.runtime.start()
            invoker = self.runtime
        self.gateway = Gateway(self.app, self.broker, invoker, submit, self.config)
        await self.gateway.serve("127.0.0.1", 0)

    async def _stop(self, grace: float) -> None:
        if self.gateway is not None:
            await self.gateway.shutdown(grace)
        if self.broker is not None:
            await self.broker.close()
        if self.runtime is not None:
            await self.runtime.close()

    @property
    def port(self) -> int:
        assert self.gateway is not None
        return self.gateway.port

    def __enter__(self) -> GatewayThread:
        self.thread.start()
        self.run(self._start())
        return self

    def stop(self, grace: float = 1.0) -> None:
        if self.thread.is_alive():
            self.run(self._stop(grace))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Reply:
    def __init__(
        self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        self.status = status
        self.reason = reason
        self.header_list = [(k.lower(), v) for k, v in headers]
        self.headers = dict(self.header_list)  # the last value of each
        self.body = body

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.header_list if k == name]

    def json(self) -> Any:
        return orjson.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        r = conn.getresponse()
        return Reply(r.status, r.reason, r.getheaders(), r.read())
    finally:
        conn.close()


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def wait_until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.02)
