"""Running an app: `sluice dev`, `gateway`, `worker`; deploying: `deploy`, `versions`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import click
import orjson

from sluice.cli.common import (
    DEV_FILE,
    T,
    fail,
    main,
    print_json,
    rich_console,
    run_async,
    settings_of,
)
from sluice.config import Settings
from sluice.errors import SluiceError

# -- running ---------------------------------------------------------------------------------


def _export_data_dir(settings: Settings) -> None:
    """Functions (and the app module, imported here and again in each template) see the data
    directory as SLUICE_DATA_DIR, e.g. to keep an embedded database beside the broker's."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["SLUICE_DATA_DIR"] = str(settings.data_dir.resolve())


def _serve(settings: Settings, app_ref: str, roles: Any) -> None:
    from sluice.platform import Platform, settle_heap
    from sluice.runtime.loader import load_app

    _export_data_dir(settings)
    app, source = load_app(app_ref)
    platform = Platform(app, source.ref, settings)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await platform.start(roles)
        settle_heap()
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

    _run_until_stopped(serve())


def _run_until_stopped(serve: Coroutine[Any, Any, None]) -> None:
    """Run a serving coroutine on uvloop; a Sluice error or an OS error (a port already taken)
    ends the command with a clear message and a non-zero exit code."""
    import uvloop

    try:
        uvloop.run(serve)
    except SluiceError as exc:
        fail(f"{exc.code}: {exc.message}")
    except OSError as exc:
        fail(str(exc))


def _banner(platform: Any, url: str | None) -> None:
    from rich.table import Table

    console = rich_console()
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


def _access_log_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--access-log",
        metavar="FILE",
        default=None,
        help="Write the gateway's access log (one JSON line per request) to FILE, '-' for "
        "standard output. Off by default, as API Gateway's access logging is.",
    )(f)


def _enable_access_log(target: str | None) -> None:
    if target is None:
        return
    handler: logging.Handler = (
        logging.StreamHandler(sys.stdout) if target == "-" else logging.FileHandler(target)
    )
    handler.setFormatter(logging.Formatter("%(message)s"))  # the line is the JSON object
    access = logging.getLogger("sluice.gateway.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False


@main.command()
@_run_options
@_access_log_option
@click.pass_context
def dev(
    ctx: click.Context,
    app_ref: str | None,
    port: int | None,
    host: str | None,
    data_dir: Path | None,
    access_log: str | None,
) -> None:
    """Run APP (path/to/app.py or package.module:app) with every part in one process tree."""
    from sluice.platform import Roles

    if app_ref is None:
        fail("missing APP: sluice dev path/to/app.py", 2)
    _enable_access_log(access_log)

    settings = settings_of(ctx).with_(control_loopback=True, **_hp(host, port, data_dir))
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
@_access_log_option
@click.pass_context
def gateway(
    ctx: click.Context,
    app_ref: str | None,
    port: int | None,
    host: str | None,
    data_dir: Path | None,
    app_name: str | None,
    poll_interval: float,
    access_log: str | None,
) -> None:
    """Run only the HTTP gateway of APP or of --app-name (scale out: many gateways, shared
    backends)."""
    from sluice.platform import Roles

    _enable_access_log(access_log)
    settings = settings_of(ctx).with_(**_hp(host, port, data_dir))
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

    settings = settings_of(ctx).with_(**_hp(None, None, data_dir))
    _serve_either(settings, app_ref, app_name, Roles(dispatch=True, http=False), poll_interval)


def _serve_either(
    settings: Settings,
    app_ref: str | None,
    app_name: str | None,
    roles: Any,
    poll_interval: float,
) -> None:
    if (app_ref is None) == (app_name is None):
        fail("give either APP (a local app) or --app-name NAME (its latest deployed version)", 2)
    if app_name is not None:
        _follow(settings, app_name, roles, poll_interval)
    else:
        assert app_ref is not None
        _serve(settings, app_ref, roles)


def _follow(settings: Settings, app_name: str, roles: Any, poll_interval: float) -> None:
    from sluice.deploy.follower import Follower

    _export_data_dir(settings)
    # Version switches and backend outages are what an operator watches a follower for.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    deploy_log = logging.getLogger("sluice.deploy")
    deploy_log.addHandler(handler)
    deploy_log.setLevel(logging.INFO)
    follower = Follower(settings, app_name, roles, poll_interval=poll_interval, settles_heap=True)

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

    _run_until_stopped(serve())


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

    return run_async(run)


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
        fail(f"{exc.code}: {exc.message}", 2)
    info = _with_deployments(settings_of(ctx), lambda d: d.deploy(app.name, bundle))
    if as_json:
        print_json(info.to_dict())
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
    found = _with_deployments(settings_of(ctx), lambda d: d.versions(name))
    if as_json:
        print_json([v.to_dict() for v in found])
        return
    from rich.table import Table

    table = Table("version", "sha256", "files", "bytes", "deployed", title=f"app {name}")
    for v in found:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.created_at))
        table.add_row(str(v.version), v.digest[:16], str(v.files), str(v.size), stamp)
    rich_console().print(table)
