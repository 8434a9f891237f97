"""The `sluice` command line: run an app, invoke functions, work with queues, show status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import orjson

from sluice.config import CONFIG_FILE, Settings, read_config_file
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
@click.option("--state", "state_url", default=None, help="State URL (default: embedded SQLite).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=f"Config file (default $SLUICE_CONFIG, else ./{CONFIG_FILE} if present).",
)
@click.pass_context
def main(
    ctx: click.Context,
    data_dir: Path | None,
    broker_url: str | None,
    state_url: str | None,
    config_file: Path | None,
) -> None:
    """Sluice: Lambda-style functions, durable queues and an HTTP gateway, self-hosted.

    Settings come from flags, then SLUICE_* variables, then the config file, then defaults."""
    ctx.ensure_object(dict)
    try:
        file_values = _config_file_values(config_file)
    except SluiceError as exc:
        _fail(exc.message, 2)
    ctx.obj["settings"] = Settings.from_env(
        file_values, data_dir=data_dir, broker_url=broker_url, state_url=state_url
    )


def _config_file_values(explicit: Path | None) -> dict[str, Any]:
    path = explicit or (
        Path(os.environ["SLUICE_CONFIG"]) if "SLUICE_CONFIG" in os.environ else None
    )
    if path is None:
        path = Path(CONFIG_FILE)
        if not path.is_file():
            return {}
    return read_config_file(path)


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
    except OSError as exc:  # e.g. the port is taken
        _fail(str(exc))


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
            table.add_row(r.route_key, str(r.target))
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
    if app.usage and url:
        click.echo(app.usage.replace("{url}", url))  # unwrapped: the lines are for copying
    console.print("press Ctrl-C to stop")


def _run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--data-dir", type=click.Path(path_type=Path), default=None, help="Embedded data directory."
    )(f)
    f = click.option("--host", default=None, help="Interface to listen on (default 127.0.0.1).")(f)
    f = click.option("--port", type=int, default=None, help="HTTP port (default 8080).")(f)
    return click.argument("app_ref", metavar="APP", required=False)(f)


@main.command()
@_run_options
@click.pass_context
def dev(
    ctx: click.Context,
    app_ref: str | None,
    port: int | None,
    host: str | None,
    data_dir: Path | None,
) -> None:
    """Run APP (path/to/app.py or package.module:app) with every part in one process tree."""
    from sluice.platform import Roles

    if app_ref is None:
        _fail("missing APP: sluice dev path/to/app.py", 2)

    settings = _settings(ctx).with_(control_loopback=True, **_hp(host, port, data_dir))
    _serve(settings, app_ref, Roles(dispatch=True, http=True))


def _follow_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--poll-interval",
        type=click.FloatRange(min=0.1),
        default=2.0,
        show_default=True,
        help="Seconds between checks for a new deployed version (with --app-name).",
    )(f)
    return click.option(
        "--app-name", help="Run the latest deployed version of this app instead of a local APP."
    )(f)


@main.command()
@_run_options
@_follow_options
@click.pass_context
def gateway(
    ctx: click.Context,
    app_ref: str | None,
    port: int | None,
    host: str | None,
    data_dir: Path | None,
    app_name: str | None,
    poll_interval: float,
) -> None:
    """Run only the HTTP gateway of APP or of --app-name (scale out: many gateways, shared
    backends)."""
    from sluice.platform import Roles

    settings = _settings(ctx).with_(**_hp(host, port, data_dir))
    _serve_either(settings, app_ref, app_name, Roles(dispatch=False, http=True), poll_interval)


@main.command()
@click.argument("app_ref", metavar="[APP]", required=False)
@click.option(
    "--data-dir", type=click.Path(path_type=Path), default=None, help="Local data directory."
)
@_follow_options
@click.pass_context
def worker(
    ctx: click.Context,
    app_ref: str | None,
    data_dir: Path | None,
    app_name: str | None,
    poll_interval: float,
) -> None:
    """Run only the dispatcher and runtime of APP or of --app-name (scale out: many workers,
    shared backends)."""
    from sluice.platform import Roles

    settings = _settings(ctx).with_(**_hp(None, None, data_dir))
    _serve_either(settings, app_ref, app_name, Roles(dispatch=True, http=False), poll_interval)


def _serve_either(
    settings: Settings,
    app_ref: str | None,
    app_name: str | None,
    roles: Any,
    poll_interval: float,
) -> None:
    if (app_ref is None) == (app_name is None):
        _fail("give either APP (a local app) or --app-name NAME (its latest deployed version)", 2)
    if app_name is not None:
        _follow(settings, app_name, roles, poll_interval)
    else:
        assert app_ref is not None
        _serve(settings, app_ref, roles)


def _follow(settings: Settings, app_name: str, roles: Any, poll_interval: float) -> None:
    from sluice.deploy.follower import Follower

    # Version switches and backend outages are what an operator watches a follower for.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    deploy_log = logging.getLogger("sluice.deploy")
    deploy_log.addHandler(handler)
    deploy_log.setLevel(logging.INFO)
    follower = Follower(settings, app_name, roles, poll_interval=poll_interval)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.create_task(follower.start())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done() and starting.result():
                where = f" on http://{settings.host}:{follower.port}" if roles.http else ""
                click.echo(
                    f"sluice: {app_name} version {follower.version}{where}; following new "
                    f"versions every {poll_interval:g}s",
                    err=True,
                )
                await stopping
        finally:
            click.echo("shutting down: draining in-flight work ...", err=True)
            follower.request_stop()
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError, SluiceError):
                await starting
            await follower.close()

    try:
        import uvloop

        uvloop.run(serve())
    except SluiceError as exc:
        _fail(f"{exc.code}: {exc.message}")
    except OSError as exc:  # e.g. the port is taken
        _fail(str(exc))


def _hp(host: str | None, port: int | None, data_dir: Path | None) -> dict[str, Any]:
    options = {"host": host, "port": port, "data_dir": data_dir}
    return {k: v for k, v in options.items() if v is not None}


# -- deploy ----------------------------------------------------------------------------------


def _with_deployments(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from sluice.deploy import Deployments
    from sluice.deploy.follower import state_url
    from sluice.state import open_state

    async def run() -> T:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        state = open_state(state_url(settings))
        await state.start()
        try:
            return await work(Deployments(state))
        finally:
            await state.close()

    return _run(run)


@main.command()
@click.argument("app_ref", metavar="APP")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def deploy(ctx: click.Context, app_ref: str, as_json: bool) -> None:
    """Store APP's source as a new immutable version in the state store (--state / $SLUICE_STATE);
    workers and gateways run with --app-name pick it up without a restart."""
    from sluice.deploy import build_bundle
    from sluice.runtime.loader import load_app

    try:
        app, source = load_app(app_ref)
        app.validate()
        bundle = build_bundle(app_ref, source.attr)
    except SluiceError as exc:
        _fail(f"{exc.code}: {exc.message}", 2)
    info = _with_deployments(_settings(ctx), lambda d: d.deploy(app.name, bundle))
    if as_json:
        _print_json(info.to_dict())
    else:
        click.echo(
            f"deployed {info.app} version {info.version} "
            f"({info.files} files, {info.size} bytes, sha256 {info.digest})"
        )


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def versions(ctx: click.Context, name: str, as_json: bool) -> None:
    """List the deployed versions of app NAME."""
    found = _with_deployments(_settings(ctx), lambda d: d.versions(name))
    if as_json:
        _print_json([v.to_dict() for v in found])
        return
    from rich.table import Table

    table = Table("version", "sha256", "files", "bytes", "deployed", title=f"app {name}")
    for v in found:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.created_at))
        table.add_row(str(v.version), v.digest[:16], str(v.files), str(v.size), stamp)
    _console().print(table)


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


def _control(settings: Settings, url: str | None, method: str, path: str) -> Any:
    """Call the running platform's control API (see sluice.gateway.control)."""
    import urllib.error
    import urllib.request

    url = url or _running_url(settings)
    if url is None:
        _fail("no platform is running for this data dir (start `sluice dev APP`, or pass --url)")
    headers = {}
    if settings.control_token:
        headers["authorization"] = f"Bearer {settings.control_token}"
    request = urllib.request.Request(f"{url}{path}", method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        _fail(f"{url}{path}: HTTP {exc.code} {detail}", 2 if exc.code < 500 else 1)
    except urllib.error.URLError as exc:
        _fail(f"cannot reach {url}: {exc}")


@main.group()
def mapping() -> None:
    """Enable or disable an event source mapping of the running platform."""


@mapping.command("disable")
@click.argument("name", metavar="QUEUE->FUNCTION")
@click.option("--url", help="A running platform's URL (default: the one serving --data-dir).")
@click.pass_context
def mapping_disable(ctx: click.Context, name: str, url: str | None) -> None:
    """Stop draining the queue; batches in flight finish, messages wait."""
    from urllib.parse import quote

    _control(_settings(ctx), url, "POST", f"/_sluice/mappings/{quote(name, safe='')}/disable")
    click.echo(f"disabled {name}")


@mapping.command("enable")
@click.argument("name", metavar="QUEUE->FUNCTION")
@click.option("--url", help="A running platform's URL (default: the one serving --data-dir).")
@click.pass_context
def mapping_enable(ctx: click.Context, name: str, url: str | None) -> None:
    """Resume draining the queue."""
    from urllib.parse import quote

    _control(_settings(ctx), url, "POST", f"/_sluice/mappings/{quote(name, safe='')}/enable")
    click.echo(f"enabled {name}")


@main.command()
@click.option("--url", help="A running platform's URL (default: the one serving --data-dir).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, url: str | None, as_json: bool) -> None:
    """Functions (environments warm/busy), queues and mappings of the running platform."""
    data = _control(_settings(ctx), url, "GET", "/_sluice/status")
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
    table = Table(
        "mapping", "enabled", "concurrency", "in flight", "batches", "failures", title="mappings"
    )
    for m in data["mappings"]:
        table.add_row(
            m["name"],
            "yes" if m.get("enabled", True) else "no",
            f"{m['target_concurrency']}/{m['max_concurrency']}",
            str(m["in_flight"]),
            str(m["batches"]),
            str(m["failures"]),
        )
    console.print(table)


if __name__ == "__main__":
    main()
