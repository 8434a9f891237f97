"""What every `sluice` command shares: the group, settings, output and error helpers."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import orjson

from sluice.config import CONFIG_FILE, Settings, read_config_file
from sluice.errors import SluiceError

T = TypeVar("T")
DEV_FILE = "dev.json"  # written by `sluice dev` into the data dir so other commands find it


def rich_console() -> Any:
    from rich.console import Console

    return Console(stderr=False)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(factory())  # type: ignore[arg-type]
    except SluiceError as exc:
        fail(f"{exc.code}: {exc.message}", 2 if exc.status < 500 else 1)
        raise AssertionError from None


def settings_of(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]  # type: ignore[no-any-return]


def print_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def read_payload(value: str | None) -> bytes:
    if value is None:
        return b"{}"
    data = Path(value[1:]).read_bytes() if value.startswith("@") else value.encode()
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        fail(f"payload is not valid JSON: {exc}", 2)
    return data


def running_url(settings: Settings) -> str | None:
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
        file_values = config_file_values(config_file)
    except SluiceError as exc:
        fail(exc.message, 2)
    ctx.obj["settings"] = Settings.from_env(
        file_values, data_dir=data_dir, broker_url=broker_url, state_url=state_url
    )


def config_file_values(explicit: Path | None) -> dict[str, Any]:
    path = explicit or (
        Path(os.environ["SLUICE_CONFIG"]) if "SLUICE_CONFIG" in os.environ else None
    )
    if path is None:
        path = Path(CONFIG_FILE)
        if not path.is_file():
            return {}
    return read_config_file(path)
