"""`sluice queue`: send, receive, purge, redrive and inspect queues."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click
import orjson

from sluice.cli.common import (
    T,
    main,
    print_json,
    rich_console,
    run_async,
    settings_of,
)
from sluice.config import Settings

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

    return run_async(run)


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

    ids = _with_broker(settings_of(ctx), send)
    if as_json:
        print_json({"MessageIds": ids})
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

    for m in _with_broker(settings_of(ctx), receive):
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
    n = _with_broker(settings_of(ctx), lambda b: b.purge(name))
    click.echo(f"purged {n} messages from {name}")


@queue.command("redrive")
@click.argument("dlq")
@click.option("--to", help="Destination queue (default: the queue that uses DLQ).")
@click.option("--limit", type=int, help="Move at most this many.")
@click.pass_context
def queue_redrive(ctx: click.Context, dlq: str, to: str | None, limit: int | None) -> None:
    """Move messages from dead-letter queue DLQ back to their source queue."""
    n = _with_broker(settings_of(ctx), lambda b: b.redrive(dlq, to=to, limit=limit))
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

    rows = _with_broker(settings_of(ctx), stats)
    if as_json:
        print_json(rows)
    else:
        queue_table(rows)


def queue_table(rows: list[dict[str, Any]]) -> None:
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
    rich_console().print(table)
