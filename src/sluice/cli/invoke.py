"""`sluice invoke`: a function, synchronously or as an Event."""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson

from sluice.cli.common import (
    fail,
    main,
    print_json,
    read_payload,
    run_async,
    running_url,
    settings_of,
)
from sluice.errors import SluiceError

# -- invoke ----------------------------------------------------------------------------------


@main.command()
@click.argument("function")
@click.option("--payload", help="JSON payload, or @file.")
@click.option("--async", "asynchronous", is_flag=True, help="Event invoke: enqueue and return.")
@click.option("--app", "app_ref", help="Run APP's function here when no platform is running.")
@click.option("--url", help="A running platform's URL (default: the one serving --data-dir).")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.pass_context
def invoke(
    ctx: click.Context,
    function: str,
    payload: str | None,
    asynchronous: bool,
    app_ref: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Invoke FUNCTION synchronously (print its result) or with --async (print the request id)."""
    settings = settings_of(ctx)
    data = read_payload(payload)
    if asynchronous:
        from sluice.dispatch.async_invoke import submit_async
        from sluice.platform import open_broker

        async def enqueue() -> str:
            broker = open_broker(settings)
            await broker.start()
            try:
                return await submit_async(broker, function, data)
            finally:
                await broker.close()

        request_id = run_async(enqueue)
        print_json({"RequestId": request_id, "StatusCode": 202}) if as_json else click.echo(
            request_id
        )
        return
    url = url or running_url(settings)
    if url is not None:
        from sluice.client import Client, FunctionError

        client = Client(data_dir=settings.data_dir, url=url)
        try:
            result = client.invoke(function, orjson.loads(data))
        except FunctionError as exc:
            print_json(exc.error)
            sys.exit(1)
        except SluiceError as exc:
            fail(exc.message)
        finally:
            client.close()
        print_json(result)
        return
    if app_ref is None:
        fail("no platform is running for this data dir: start `sluice dev APP`, or pass --app APP")
    _invoke_here(app_ref, function, data, as_json)


def _invoke_here(app_ref: str, function: str, data: bytes, as_json: bool) -> None:
    from sluice.limits.local import LocalLimiter
    from sluice.runtime.loader import load_app
    from sluice.runtime.pool import Runtime

    app, source = load_app(app_ref)
    app.get_function(function)

    async def once() -> Any:
        runtime = Runtime(source.ref, app.functions, limiter=LocalLimiter())
        await runtime.start()
        try:
            return await runtime.invoke(function, data)
        finally:
            await runtime.close()

    result = run_async(once)
    if as_json:
        print_json({"ok": result.ok, "payload": orjson.loads(result.payload), "logs": result.logs})
    else:
        click.echo(result.logs, err=True)
        print_json(orjson.loads(result.payload))
    if not result.ok:
        sys.exit(1)
