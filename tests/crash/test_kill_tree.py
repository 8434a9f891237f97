"""kill -9 of the whole `sluice dev` process tree while messages are processed: after a restart,
every message sent before the kill ends processed or in the DLQ. Duplicates are counted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

from sluice.broker.contract import OutgoingMessage
from sluice.broker.sqlite import SQLiteBroker
from tests.servers import free_port

APP = str(Path(__file__).parent / "crash_app.py")
TOTAL = int(os.environ.get("SLUICE_CRASH_MESSAGES", "100000"))
SLUICE = [sys.executable, "-m", "sluice.cli"]


def processed(out: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for f in out.glob("*.ids"):
        counts.update(f.read_text().split())
    return counts


def start_dev(data: Path, out: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CRASH_OUT=str(out))
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [*SLUICE, "dev", APP, "--data-dir", str(data), "--port", str(free_port())],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_tree(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL the process and every descendant at once (environments run in their own
    sessions, so a process-group kill would miss them)."""
    root = psutil.Process(proc.pid)
    victims = [root, *root.children(recursive=True)]
    for p in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=10)
    proc.wait()
    return len(victims)


async def queue_ids(broker: SQLiteBroker, queue: str) -> list[str]:
    messages = await broker.receive(queue, 10_000, visibility_timeout=600)
    return [m.message_id for m in messages]


def test_kill_minus_nine_loses_nothing(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    log = tmp_path / "sluice.log"

    async def send_all() -> list[str]:
        broker = SQLiteBroker(data / "broker.db")
        await broker.start()
        from sluice.broker.contract import QueueConfig

        await broker.create_queue(QueueConfig("jobs-dlq"))
        await broker.create_queue(
            QueueConfig("jobs", visibility_timeout=3, dead_letter="jobs-dlq", max_receive_count=10)
        )
        ids: list[str] = []
        for start in range(0, TOTAL, 1000):
            batch = [OutgoingMessage(body=f'{{"n": {n}}}') for n in range(start, start + 1000)]
            ids += [r.message_id for r in await broker.send("jobs", batch)]
        await broker.close()
        return ids

    sent = asyncio.run(send_all())
    assert len(set(sent)) == TOTAL

    proc = start_dev(data, out, log)
    deadline = time.monotonic() + 60
    while sum(processed(out).values()) < TOTAL // 5:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "processing did not start: " + log.read_text()
        time.sleep(0.05)
    killed = kill_tree(proc)
    before_restart = sum(processed(out).values())
    assert killed >= 3  # supervisor, template, environments
    assert before_restart < TOTAL, "the kill came too late to test anything"

    proc = start_dev(data, out, log)
    try:

        async def remaining() -> int:
            broker = SQLiteBroker(data / "broker.db")
            await broker.start()
            try:
                return (await broker.stats("jobs")).total
            finally:
                await broker.close()

        deadline = time.monotonic() + 120
        while asyncio.run(remaining()) > 0:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the queue did not drain after the restart"
            time.sleep(0.25)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    async def dead_lettered() -> list[str]:
        broker = SQLiteBroker(data / "broker.db")
        await broker.start()
        try:
            return await queue_ids(broker, "jobs-dlq")
        finally:
            await broker.close()

    counts = processed(out)
    in_dlq = set(asyncio.run(dead_lettered()))
    lost = set(sent) - set(counts) - in_dlq
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    print(
        f"\ncrash test: sent {TOTAL}, processed before kill {before_restart}, "
        f"processed {len(counts)}, in DLQ {len(in_dlq)}, lost {len(lost)}, "
        f"duplicates {duplicates} (killed {killed} processes)"
    )
    assert not lost
    assert set(counts) <= set(sent)
    # At-least-once: only batches in flight at the kill may run twice (4 batches of 100 each).
    assert duplicates <= 4 * 100 * 2
