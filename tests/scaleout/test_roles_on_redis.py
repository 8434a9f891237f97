"""The scale-out roles against Redis, each in its own process: a global `max_concurrency` over
two workers, a gateway whose Redis is gone, and a worker whose Redis goes away and comes back."""

from __future__ import annotations

import asyncio
import http.client
import os
import secrets
import time
from pathlib import Path

import orjson
import pytest

from sluice.broker.redis import RedisBroker
from sluice.client import Client
from tests.scaleout.procs import Redis, Sluice, free_port, wait_for, wait_port, write_app
from tests.servers import require_redis

pytestmark = pytest.mark.redis

SOURCE = """
import os
import time
import sluice

app = sluice.App("{name}")
app.queue("{queue}", visibility_timeout={visibility})
app.route("POST /items", to="{queue}")


def record(line):
    fd = os.open(os.environ["ROLE_OUT"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)


@app.consume("{queue}", batch_size={batch}, max_concurrency=3)
def work(event, context):
    start = time.time()
    time.sleep({sleep})
    end = time.time()
    for r in event["Records"]:
        record(f"{{r['body']}} {{start}} {{end}} {{os.environ['ROLE_WORKER']}}")
"""


def app_file(tmp_path: Path, *, batch: int, sleep: float, visibility: int = 30) -> tuple[Path, str]:
    queue = f"q-{secrets.token_hex(3)}"
    source = SOURCE.format(
        name=f"roles{secrets.token_hex(3)}",
        queue=queue,
        batch=batch,
        sleep=sleep,
        visibility=visibility,
    )
    return write_app(tmp_path / "src", source), queue


def records(out: Path) -> list[list[str]]:
    return [line.split() for line in out.read_text().splitlines()] if out.exists() else []


def send(url: str, queue: str, bodies: list[str]) -> None:
    with Client(broker_url=url) as client:
        client.send_batch(queue, bodies)


def queue_total(url: str, queue: str) -> int:
    async def run() -> int:
        broker = RedisBroker(url)
        await broker.start()
        try:
            return (await broker.stats(queue)).total
        finally:
            await broker.close()

    return asyncio.run(run())


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def worker(app: Path, tmp_path: Path, broker: str, out: Path, tag: str) -> Sluice:
    env = {
        "SLUICE_BROKER": broker,
        "SLUICE_DATA_DIR": str(tmp_path / f"data-{tag}"),
        "ROLE_OUT": str(out),
        "ROLE_WORKER": tag,
    }
    return Sluice(["worker", str(app)], {**os.environ, **env}, tmp_path / f"{tag}.log", tmp_path)


def wait_queue(url: str, queue: str, proc: Sluice) -> None:
    def exists() -> bool:
        try:
            queue_total(url, queue)
        except Exception:
            return False
        return True

    wait_for(exists, f"queue {queue} created by the worker", 30, proc)


def test_two_workers_never_exceed_a_global_max_concurrency(tmp_path: Path) -> None:
    url = require_redis()
    app, queue = app_file(tmp_path, batch=1, sleep=0.15)
    out = tmp_path / "out.txt"
    workers = [worker(app, tmp_path, url, out, tag) for tag in ("w1", "w2")]
    try:
        for w in workers:
            wait_queue(url, queue, w)
        send(url, queue, [f"m{i}" for i in range(36)])
        wait_for(lambda: len(records(out)) >= 12, "12 messages handled", 60, workers[0])
        # The leases go to whichever worker asks first, so one may take every slot. Stop the
        # busier one: the other must take over, so both run handlers against the same cap.
        busier = max(("w1", "w2"), key=lambda t: sum(r[3] == t for r in records(out)))
        workers[int(busier[1]) - 1].stop()
        wait_for(lambda: len(records(out)) >= 36, "36 messages handled", 60, workers[0])
        assert all(w.alive for w in workers if w is not workers[int(busier[1]) - 1])
    finally:
        for w in workers:
            w.stop()
    rows = records(out)
    assert sorted(r[0] for r in rows) == sorted(f"m{i}" for i in range(36))
    peak = peak_overlap([(float(r[1]), float(r[2])) for r in rows])
    # Each worker alone runs 3 at once: 6 together without a shared lease.
    assert 2 <= peak <= 3, peak
    assert {r[3] for r in rows} == {"w1", "w2"}


def post(port: int, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/items", body, {"content-type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_gateway_answers_503_never_202_while_redis_is_down(tmp_path: Path) -> None:
    require_redis()
    app, _ = app_file(tmp_path, batch=1, sleep=0)
    redis = Redis(tmp_path / "redis")
    redis.start()
    port = free_port()
    env = {**os.environ, "SLUICE_BROKER": redis.url, "SLUICE_DATA_DIR": str(tmp_path / "gw")}
    gateway = Sluice(["gateway", str(app), "--port", str(port)], env, tmp_path / "gw.log", tmp_path)
    try:
        wait_port(port, gateway)
        assert post(port, b'{"n": 0}')[0] == 202
        redis.kill()
        answers = [post(port, orjson.dumps({"n": i})) for i in range(1, 21)]
        assert [status for status, _ in answers] == [503] * 20, answers
        for _, body in answers:
            assert orjson.loads(body)["error"] == "ServiceUnavailable", body
        redis.start()
        wait_for(lambda: post(port, b'{"n": 21}')[0] == 202, "202 once Redis is back", 20, gateway)
    finally:
        gateway.stop()
        redis.kill()


def test_worker_keeps_draining_across_a_redis_restart_and_loses_nothing(tmp_path: Path) -> None:
    require_redis()
    app, queue = app_file(tmp_path, batch=10, sleep=0.05, visibility=2)
    redis = Redis(tmp_path / "redis", fsync="always")
    redis.start()
    out = tmp_path / "out.txt"
    proc = worker(app, tmp_path, redis.url, out, "w1")
    sent = [f"m{i}" for i in range(400)]
    try:
        wait_queue(redis.url, queue, proc)
        send(redis.url, queue, sent)
        wait_for(lambda: len(records(out)) >= 60, "draining started", 30, proc)
        redis.kill()
        time.sleep(1.5)
        assert proc.alive, proc.output()
        redis.start()
        handled = lambda: {r[0] for r in records(out)}  # noqa: E731
        # Leases whose release failed during the outage are released on reconnect, so draining
        # resumes at once, not after the lease time-to-live (33 s here).
        started = time.monotonic()
        wait_for(lambda: set(sent) <= handled(), "every message handled", 45, proc)
        assert time.monotonic() - started < 20, "draining stalled after the restart"
        wait_for(lambda: queue_total(redis.url, queue) == 0, "queue empty", 15, proc)
        assert proc.alive, proc.output()
    finally:
        proc.stop()
        redis.kill()
