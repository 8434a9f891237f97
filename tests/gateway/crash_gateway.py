"""A gateway alone in a process, for the kill -9 test:
``python crash_gateway.py DB PORTFILE [thread|process]``. It serves ``POST /jobs`` (async invoke)
and ``POST /inbox`` (queue) on a SQLite broker at DB, its sends committed by the broker's writer
thread or by a send process, and writes its port to PORTFILE once listening."""

from __future__ import annotations

import asyncio
import functools
import sys
from pathlib import Path
from typing import Any

import uvloop

from sluice.app import App
from sluice.broker.sqlite import SQLiteBroker
from sluice.dispatch.async_invoke import async_queue_configs, submit_async
from sluice.gateway import Gateway, GatewayConfig
from sluice.runtime.contract import InvocationResult


def make_app() -> App:
    app = App("crash")
    app.queue("inbox")

    @app.route("POST /jobs", to="async")
    def job(event: dict[str, Any], context: object) -> None:
        return None

    app.add_route("POST /inbox", "queue:inbox")
    return app


class NoInvoker:
    """This app has no synchronous routes; an invoke would be a bug in the gateway."""

    async def invoke(self, function: str, payload: bytes, **_: Any) -> InvocationResult:
        raise AssertionError(f"unexpected synchronous invoke of {function}")


async def main(db: Path, port_file: Path, writer: str) -> None:
    app = make_app()
    broker = SQLiteBroker(db, send_process=writer == "process")
    await broker.start()
    await broker.create_queue(app.queues["inbox"])
    for queue in async_queue_configs([app.functions["job"]]):
        await broker.create_queue(queue)
    gateway = Gateway(
        app, broker, NoInvoker(), functools.partial(submit_async, broker), GatewayConfig()
    )
    await gateway.serve("127.0.0.1", 0)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(gateway.port))
    tmp.rename(port_file)
    await asyncio.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    uvloop.run(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]))
