"""The running platform's control API: `sluice status`, `sluice mapping`."""

from __future__ import annotations

from typing import Any

import click
import orjson

from sluice.cli.common import (
    fail,
    main,
    print_json,
    rich_console,
    running_url,
    settings_of,
)
from sluice.cli.queue import queue_table
from sluice.config import Settings

# -- status ----------------------------------------------------------------------------------


def _control(settings: Settings, url: str | None, method: str, path: str) -> Any:
    """Call the running platform's control API (see sluice.gateway.control)."""
    import urllib.error
    import urllib.request

    url = url or running_url(settings)
    if url is None:
        fail("no platform is running for this data dir (start `sluice dev APP`, or pass --url)")
    headers = {}
    if settings.control_token:
        headers["authorization"] = f"Bearer {settings.control_token}"
    request = urllib.request.Request(f"{url}{path}", method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        fail(f"{url}{path}: HTTP {exc.code} {detail}", 2 if exc.code < 500 else 1)
    except urllib.error.URLError as exc:
        fail(f"cannot reach {url}: {exc}")


@main.group()
def mapping() -> None:
    """Enable or disable an event source mapping of the running platform."""


def _toggle_mapping(ctx: click.Context, name: str, url: str | None, action: str) -> None:
    from urllib.parse import quote

    _control(settings_of(ctx), url, "POST", f"/_sluice/mappings/{quote(name, safe='')}/{action}")
    click.echo(f"{action}d {name}")


@mapping.command("disable")
@click.argument("name", metavar="QUEUE->FUNCTION")
@click.option("--url", help="A running platform's URL (default: the one serving --data-dir).")
@click.pass_context
def mapping_disable(ctx: click.Context, name: str, url: str | None) -> None:
    """Stop draining the queue; batches in flight finish, messages wait."""
    _toggle_mapping(ctx, name, url, "disable")


@mapping.command("enable")
@click.argument("name", metavar="QUEUE->FUNCTION")
@click.option("--url", help="A running platform's URL (default: the one serving --data-dir).")
@click.pass_context
def mapping_enable(ctx: click.Context, name: str, url: str | None) -> None:
    """Resume draining the queue."""
    _toggle_mapping(ctx, name, url, "enable")


@main.command()
@click.option("--url", help="A running platform's URL (default: the one serving --data-dir).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, url: str | None, as_json: bool) -> None:
    """Functions (environments warm/busy), queues and mappings of the running platform."""
    data = _control(settings_of(ctx), url, "GET", "/_sluice/status")
    if as_json:
        print_json(data)
        return
    from rich.table import Table

    console = rich_console()
    table = Table("function", "warm", "busy", "cold starts", title=f"app {data['app']}")
    for name, fn in data["functions"].items():
        table.add_row(
            name, str(fn.get("warm", 0)), str(fn.get("busy", 0)), str(fn.get("cold_starts", 0))
        )
    console.print(table)
    queue_table(data["queues"])
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
