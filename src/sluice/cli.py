"""The `sluice` command line: run an app, invoke functions, work with queues, show status."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import orjson

from sluice.config import Settings
from sluice.errors import SluiceError

T = TypeVar("T")
DEV_FILE = "dev.json"  # written by `sluice dev` into the data dir so other commands find it


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _run(factory: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(factory())  # type: ignore[arg-type]
    except SluiceError as exc:
        _fail(f"{exc.code}: {exc.message}", 2 if exc.status < 500 else 1)
        raise AssertionError from None


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]  # type: ignore[no-any-return]


def _print_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _payload(value: str | None) -> bytes:
    if value is None:
        return b"{}"
    data = Path(value[1:]).read_bytes() if value.startswith("@") else value.encode()
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        _fail(f"payload is not valid JSON: {exc}", 2)
    return data


def _running_url(settings: Settings) -> str | None:
    """The URL of a `sluice dev` serving this data dir, if one is alive."""
    info_file = settings.data_dir / DEV_FILE
    try:
        info = orjson.loads(info_file.read_bytes())
        os.kill(info["pid"], 0)
    except (OSError, ValueError, KeyError):
        return None
    return str(info["url"])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Embedded data directory (default .sluice, or $SLUICE_DATA_DIR).",
)
@click.option("--broker", "broker_url", default=None, help="Broker URL (default: embedded SQLite).")
@click.pass_context
def main(ctx: click.Context, data_dir: Path | None, broker_url: str | None) -> None:
    """Sluice: Lambda-style functions, durable queues and an HTTP gateway, self-hosted."""
    ctx.ensure_object(dict)
    ctx.obj["settings"] = Settings.from_env(data_dir=data_dir, broker_url=broker_url)


# -- running ---------------------------------------------------------------------------------


def _serve(settings: Settings, app_ref: str, roles: Any) -> None:
    from sluice.platform import Platform
    from sluice.runtime.loader import load_app

    app, source = load_app(app_ref)
    platform = Platform(app, source.ref, settings)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await platform.start(roles)
        url = f"http://{settings.host}:{settings.port}"
        info = settings.data_dir / DEV_FILE
        if roles.http:
            info.write_bytes(orjson.dumps({"pid": os.getpid(), "url": url}))
        _banner(platform, url if roles.http else None)
        try:
            await stop.wait()
        finally:
            click.echo("shutting down: draining in-flight work ...", err=True)
            with contextlib.suppress(FileNotFoundError):
                info.unlink()
            await platform.close()

    try:
        import uvloop

        uvloop.run(serve())
    except SluiceError as exc:
        _fail(f"{exc.code}: {exc.message}")


def _banner(platform: Any, url: str | None) -> None:
    from rich.table import Table

    console = _console()
    app = platform.app
    console.print(
        f"[bold]sluice[/bold] app [cyan]{app.name}[/cyan]  data: {platform.settings.data_dir}"
    )
    if url and app.routes:
        table = Table("route", "target", title=f"HTTP on {url}")
        for r in app.routes:
            table.add_row(r.route_key, r.target)
        console.print(table)
    if app.mappings:
        table = Table("queue", "function", "batch", "window", "max concurrency", title="mappings")
        for m in app.mappings:
            table.add_row(
                m.queue,
                m.function,
                str(m.batch_size),
                f"{m.batching_window:g}s",
                str(m.max_concurrency or platform.settings.default_mapping_concurrency),
            )
        console.print(table)
    console.print("press Ctrl-C to stop")


def _run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--data-dir", type=click.Path(path_type=Path), default=None, help="Embedded data directory."
    )(f)
    f = click.option("--host", default=None, help="Interface to listen on (default 127.0.0.1).")(f)
    f = click.option("--port", type=int, default=None, help="HTTP port (default 8080).")(f)
    return click.argument("app_ref", metavar="APP")(f)


@main.command()
@_run_options
@click.pass_context
def dev(
    ctx: click.Context, app_ref: str, port: int | None, host: str | None, data_dir: Path | None
) -> None:
    """Run APP (path/to/app.py or package.module:app) with every part in one process tree."""
    from sluice.platform import Roles

    settings = _settings(ctx).with_(control_loopback=True, **_hp(host, port, data_dir))
    _serve(settings, app_ref, Roles(dispatch=True, http=True))


@main.command()
@_run_options
@click.pass_context
def gateway(
    ctx: click.Context, app_ref: str, port: int | None, host: str | None, data_dir: Path | None
) -> None:
    """Run only the HTTP gateway of APP (scale out: many gateways, shared backends)."""
    from sluice.platform import Roles

    settings = _settings(ctx).with_(**_hp(host, port, data_dir))
    _serve(settings, app_ref, Roles(dispatch=False, http=True))


@main.command()
@click.argument("app_ref", metavar="APP")
@click.pass_context
def worker(ctx: click.Context, app_ref: str) -> None:
    """Run only the dispatcher and runtime of APP (scale out: many workers, shared backends)."""
    from sluice.platform import Roles

    _serve(_settings(ctx), app_ref, Roles(dispatch=True, http=False))


def _hp(host: str | None, port: int | None, data_dir: Path | None) -> dict[str, Any]:
    options = {"host": host, "port": port, "data_dir": data_dir}
    return {k: v for k, v in options.items() if v is not None}


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
    settings = _settings(ctx)
    data = _payload(payload)
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

        request_id = _run(enqueue)
        _print_json({"RequestId": request_id, "StatusCode": 202}) if as_json else click.echo(
            request_id
        )
        return
    url = url or _running_url(settings)
    if url is not None:
        from sluice.client import Client, FunctionError

        client = Client(data_dir=settings.data_dir, url=url)
        try:
            result = client.invoke(function, orjson.loads(data))
        except FunctionError as exc:
            _print_json(exc.error)
            sys.exit(1)
        except SluiceError as exc:
            _fail(exc.message)
        finally:
            client.close()
        _print_json(result)
        return
    if app_ref is None:
        _fail("no platform is running for this data dir: start `sluice dev APP`, or pass --app APP")
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

    result = _run(once)
    if as_json:
        _print_json({"ok": result.ok, "payload": orjson.loads(result.payload), "logs": result.logs})
    else:
        click.echo(result.logs, err=True)
        _print_json(orjson.loads(result.payload))
    if not result.ok:
        sys.exit(1)


# -- queues ----------------------------------------------------------------------------------


@main.group()
def queue() -> None:
    """Send, receive, purge, inspect and redrive queues."""


def _with_broker(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from sluice.platform import open_broker

    async def run() -> T:
        broker = open_broker(settings)
        await broker.start()
        try:
            return await work(broker)
        finally:
            await broker.close()

    return _run(run)


@queue.command("send")
@click.argument("name")
@click.option("--body", help="Message body (default: read standard input).")
@click.option(
    "--count", type=int, default=1, show_default=True, help="Send the body this many times."
)
@click.option("--group-id", help="FIFO message group id.")
@click.option("--dedup-id", help="FIFO deduplication id.")
@click.option("--delay", type=float, help="Delay in seconds (standard queues).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queue_send(
    ctx: click.Context,
    name: str,
    body: str | None,
    count: int,
    group_id: str | None,
    dedup_id: str | None,
    delay: float | None,
    as_json: bool,
) -> None:
    """Send a message (or --count copies) to queue NAME; print the message ids."""
    from rich.progress import Progress

    from sluice.broker.contract import OutgoingMessage

    text = body if body is not None else sys.stdin.read()
    message = OutgoingMessage(body=text, group_id=group_id, deduplication_id=dedup_id, delay=delay)

    async def send(broker: Any) -> list[str]:
        ids: list[str] = []
        with Progress(disable=count < 10_000 or as_json, transient=True) as progress:
            task = progress.add_task(f"sending to {name}", total=count)
            while len(ids) < count:
                chunk = min(1000, count - len(ids))
                ids += [r.message_id for r in await broker.send(name, [message] * chunk)]
                progress.update(task, completed=len(ids))
        return ids

    ids = _with_broker(_settings(ctx), send)
    if as_json:
        _print_json({"MessageIds": ids})
    elif count <= 20:
        click.echo("\n".join(ids))
    else:
        click.echo(f"sent {len(ids)} messages to {name}")


@queue.command("receive")
@click.argument("name")
@click.option("-n", "--max", "max_messages", type=int, default=1, show_default=True)
@click.option("--wait", type=float, default=0.0, help="Long-poll seconds (max 20).")
@click.option("--visibility", type=float, help="Visibility timeout for these messages.")
@click.option("--delete", is_flag=True, help="Delete the messages once printed.")
@click.pass_context
def queue_receive(
    ctx: click.Context,
    name: str,
    max_messages: int,
    wait: float,
    visibility: float | None,
    delete: bool,
) -> None:
    """Receive messages from queue NAME and print them as JSON lines."""

    async def receive(broker: Any) -> list[Any]:
        messages = await broker.receive(
            name, max_messages, wait=wait, visibility_timeout=visibility
        )
        if delete and messages:
            await broker.delete(name, [m.receipt_handle for m in messages])
        return messages

    for m in _with_broker(_settings(ctx), receive):
        click.echo(
            orjson.dumps(
                {
                    "MessageId": m.message_id,
                    "ReceiptHandle": m.receipt_handle,
                    "Body": m.body,
                    "ApproximateReceiveCount": m.receive_count,
                    "SentTimestamp": m.sent_timestamp,
                    "MessageAttributes": m.attributes,
                    "DeadLetterReason": m.dead_letter_reason,
                }
            ).decode()
        )


@queue.command("purge")
@click.argument("name")
@click.pass_context
def queue_purge(ctx: click.Context, name: str) -> None:
    """Delete every message in queue NAME."""
    n = _with_broker(_settings(ctx), lambda b: b.purge(name))
    click.echo(f"purged {n} messages from {name}")


@queue.command("redrive")
@click.argument("dlq")
@click.option("--to", help="Destination queue (default: the queue that uses DLQ).")
@click.option("--limit", type=int, help="Move at most this many.")
@click.pass_context
def queue_redrive(ctx: click.Context, dlq: str, to: str | None, limit: int | None) -> None:
    """Move messages from dead-letter queue DLQ back to their source queue."""
    n = _with_broker(_settings(ctx), lambda b: b.redrive(dlq, to=to, limit=limit))
    click.echo(f"moved {n} messages from {dlq}")


@queue.command("stats")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queue_stats(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Show visible, in-flight and delayed counts and the oldest message's age."""

    async def stats(broker: Any) -> list[dict[str, Any]]:
        names = [name] if name else await broker.list_queues()
        return [(await broker.stats(n)).to_dict() for n in names]

    rows = _with_broker(_settings(ctx), stats)
    if as_json:
        _print_json(rows)
    else:
        _queue_table(rows)


def _queue_table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table("queue", "visible", "in flight", "delayed", "oldest age (s)", title="queues")
    for r in rows:
        table.add_row(
            r["name"],
            str(r["visible"]),
            str(r["in_flight"]),
            str(r["delayed"]),
            f"{r['oldest_age']:.1f}",
        )
    _console().print(table)


# -- status ----------------------------------------------------------------------------------


@main.command()
@click.option("--url", help="A running platform's URL (default: the one serving --data-dir).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, url: str | None, as_json: bool) -> None:
    """Functions (environments warm/busy), queues and mappings of the running platform."""
    import urllib.error
    import urllib.request

    settings = _settings(ctx)
    url = url or _running_url(settings)
    if url is None:
        _fail("no platform is running for this data dir (start `sluice dev APP`)")
    try:
        with urllib.request.urlopen(f"{url}/_sluice/status", timeout=10) as response:
            data = orjson.loads(response.read())
    except urllib.error.URLError as exc:
        _fail(f"cannot reach {url}: {exc}")
    if as_json:
        _print_json(data)
        return
    from rich.table import Table

    console = _console()
    table = Table("function", "warm", "busy", "cold starts", title=f"app {data['app']}")
    for name, fn in data["functions"].items():
        table.add_row(
            name, str(fn.get("warm", 0)), str(fn.get("busy", 0)), str(fn.get("cold_starts", 0))
        )
    console.print(table)
    _queue_table(data["queues"])
    table = Table("mapping", "concurrency", "in flight", "batches", "failures", title="mappings")
    for m in data["mappings"]:
        table.add_row(
            m["name"],
            f"{m['target_concurrency']}/{m['max_concurrency']}",
            str(m["in_flight"]),
            str(m["batches"]),
            str(m["failures"]),
        )
    console.print(table)


if __name__ == "__main__":
    main()
