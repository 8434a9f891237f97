"""The `sluice` command line, run as a user runs it: a real process, real data directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

APP = str(Path(__file__).parent / "app.py")


def sluice(data: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluice.cli", "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data dir whose broker has the app's queues (as `sluice dev` would create them)."""
    import asyncio

    from sluice.broker.sqlite import SQLiteBroker
    from sluice.runtime.loader import load_app

    app, _ = load_app(APP)

    async def create() -> None:
        broker = SQLiteBroker(tmp_path / "broker.db")
        await broker.start()
        for q in app.queues.values():
            await broker.create_queue(q)
        await broker.close()

    asyncio.run(create())
    return tmp_path


def test_queue_send_receive_stats_purge(data: Path) -> None:
    sent = sluice(data, "queue", "send", "jobs", "--body", "hello", "--json")
    assert sent.returncode == 0, sent.stderr
    [message_id] = json.loads(sent.stdout)["MessageIds"]
    assert sluice(data, "queue", "send", "jobs", "--count", "3", "--body", "x").returncode == 0
    stats = json.loads(sluice(data, "queue", "stats", "jobs", "--json").stdout)
    assert stats[0]["visible"] == 4
    received = sluice(data, "queue", "receive", "jobs", "-n", "1", "--delete")
    first = json.loads(received.stdout.splitlines()[0])
    assert first["MessageId"] == message_id and first["Body"] == "hello"
    assert "purged 3" in sluice(data, "queue", "purge", "jobs").stdout


def test_body_from_stdin_and_redrive_from_the_dlq(data: Path) -> None:
    assert sluice(data, "queue", "send", "jobs", stdin="from stdin").returncode == 0
    # max_receive_count=1: one receive, then (after the 1 s visibility) the next receive moves it.
    assert sluice(data, "queue", "receive", "jobs").stdout
    import time

    time.sleep(1.2)
    assert sluice(data, "queue", "receive", "jobs").stdout == ""
    dlq = json.loads(sluice(data, "queue", "stats", "jobs-dlq", "--json").stdout)[0]
    assert dlq["visible"] == 1
    assert "moved 1" in sluice(data, "queue", "redrive", "jobs-dlq").stdout
    back = json.loads(sluice(data, "queue", "receive", "jobs").stdout)
    assert back["Body"] == "from stdin"


def test_errors_are_clear_and_exit_non_zero(data: Path) -> None:
    missing = sluice(data, "queue", "send", "nope", "--body", "x")
    assert missing.returncode == 2 and "QueueDoesNotExist" in missing.stderr
    big = sluice(data, "queue", "send", "jobs", stdin="x" * 300_000)
    assert big.returncode == 2 and "MessageTooLarge" in big.stderr
    bad = sluice(data, "invoke", "echo", "--app", APP, "--payload", "{nope")
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
    nowhere = sluice(data, "invoke", "echo")
    assert nowhere.returncode != 0 and "sluice dev" in nowhere.stderr


def test_invoke_here_and_async(data: Path) -> None:
    ok = sluice(data, "invoke", "echo", "--app", APP, "--payload", '{"a": 1}')
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"echo": {"a": 1}, "function": "echo"}
    assert "REPORT RequestId" in ok.stderr
    failed = sluice(data, "invoke", "boom", "--app", APP)
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["errorType"] == "ValueError"
    queued = sluice(data, "invoke", "echo", "--async", "--payload", "{}", "--json")
    # The async queue exists once a platform has started; here it does not yet.
    assert queued.returncode == 2 and "QueueDoesNotExist" in queued.stderr
