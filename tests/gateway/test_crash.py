"""kill -9 of a gateway taking a stream of async and queue requests: every request that got a
202 is in its queue afterwards (the SQLite broker reopened, ids checked). With the sends
committed by the broker's writer thread, or by its send process: then the gateway alone is
killed (the child commits what it has and exits), or the gateway and the child together."""

from __future__ import annotations

import asyncio
import http.client
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import psutil
import pytest

from sluice.broker.sqlite import SQLiteBroker
from sluice.dispatch.async_invoke import async_queue_name

SCRIPT = Path(__file__).parent / "crash_gateway.py"
CLIENTS = 8


def client(port: int, path: str, acked: list[str], stop: threading.Event) -> None:
    key = "requestId" if path == "/jobs" else "messageId"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    n = 0
    try:
        while not stop.is_set():
            n += 1
            try:
                conn.request("POST", path, body=orjson.dumps({"n": n}))
                r = conn.getresponse()
                body = r.read()
            except (OSError, http.client.HTTPException):
                return  # the gateway died mid-request: this one was never acknowledged
            if r.status == 202:
                acked.append(orjson.loads(body)[key])
    finally:
        conn.close()


async def stored_ids(db: Path) -> tuple[set[str], set[str]]:
    async with SQLiteBroker(db) as broker:
        jobs: set[str] = set()
        inbox: set[str] = set()
        while batch := await broker.receive(async_queue_name("job"), 1000):
            jobs.update(m.attributes["RequestId"]["StringValue"] for m in batch)
        while batch := await broker.receive("inbox", 1000):
            inbox.update(m.message_id for m in batch)
        return jobs, inbox


@pytest.mark.parametrize(
    "writer, killed", [("thread", "gateway"), ("process", "gateway"), ("process", "both")]
)
def test_every_202_survives_a_sigkill(tmp_path: Path, writer: str, killed: str) -> None:
    db, port_file = tmp_path / "broker.db", tmp_path / "port"
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(db), str(port_file), writer], stdout=log, stderr=log
    )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.05)
        port = int(port_file.read_text())
        stop = threading.Event()
        acked_jobs: list[str] = []
        acked_inbox: list[str] = []
        threads = [
            threading.Thread(
                target=client,
                args=(
                    port,
                    "/jobs" if i % 2 else "/inbox",
                    acked_jobs if i % 2 else acked_inbox,
                    stop,
                ),
            )
            for i in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        time.sleep(1.5)  # requests flowing...
        children = psutil.Process(proc.pid).children()
        assert len(children) == (1 if writer == "process" else 0)
        if killed == "both":
            for child in children:
                child.kill()
        proc.kill()  # ...SIGKILL mid-stream
        proc.wait(10)
        for child in children:
            child.wait(10)  # killed, or exited by itself at the end of its input
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    assert len(acked_jobs) > 50 and len(acked_inbox) > 50
    jobs, inbox = asyncio.run(stored_ids(db))
    assert set(acked_jobs) <= jobs
    assert set(acked_inbox) <= inbox
