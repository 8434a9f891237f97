"""`sluice worker --app-name` on Redis + PostgreSQL: runs the latest deployed version and picks up
a new one without a restart, losing no message across the switch."""

from __future__ import annotations

import http.client
import os
import secrets
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from sluice.client import Client
from tests.scaleout.procs import SLUICE, Sluice, free_port, wait_for, wait_port, write_app
from tests.servers import require_postgres, require_redis

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

SOURCE = """
import os
import sluice

app = sluice.App("{name}")
app.queue("{queue}", visibility_timeout=30)


@app.consume("{queue}", batch_size=10)
def work(event, context):
    with open(os.environ["DEPLOY_OUT"], "a") as out:
        for record in event["Records"]:
            out.write("{tag} " + record["body"] + "\\n")
"""


def send(url: str, queue: str, bodies: list[str]) -> None:
    with Client(broker_url=url) as client:
        client.send_batch(queue, bodies)


def seen(out: Path) -> list[str]:
    return out.read_text().splitlines() if out.exists() else []


def test_worker_picks_up_a_new_version_without_restart(tmp_path: Path) -> None:
    redis_url, postgres = require_redis(), require_postgres()
    schema = f"t_{secrets.token_hex(4)}"
    name, queue = f"deploy{secrets.token_hex(3)}", f"work-{secrets.token_hex(3)}"
    out = tmp_path / "out.txt"
    env = {
        **os.environ,
        "SLUICE_BROKER": redis_url,
        "SLUICE_STATE": f"{postgres}?schema={schema}",
        "SLUICE_DATA_DIR": str(tmp_path / "data"),
        "DEPLOY_OUT": str(out),
    }
    src = tmp_path / "src"

    def deploy(tag: str) -> str:
        app = write_app(src, SOURCE.format(name=name, queue=queue, tag=tag))
        done = subprocess.run(
            [*SLUICE, "deploy", str(app)], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    worker: Sluice | None = None
    try:
        assert f"deployed {name} version 1" in deploy("v1")
        worker = Sluice(
            ["worker", "--app-name", name, "--poll-interval", "0.5"],
            env,
            tmp_path / "worker.log",
            tmp_path,
        )
        wait_for(lambda: f"{name} version 1" in worker.output(), "worker running", 30, worker)
        send(redis_url, queue, ["a"])
        wait_for(lambda: "v1 a" in seen(out), "version 1 handles a message", 30, worker)
        assert f"deployed {name} version 2" in deploy("v2")
        sent: list[str] = []
        deadline = time.monotonic() + 30
        while not any(line.startswith("v2 ") for line in seen(out)):
            assert time.monotonic() < deadline, worker.output()
            sent.append(f"m{len(sent)}")
            send(redis_url, queue, [sent[-1]])
            time.sleep(0.2)
        bodies = lambda: {line.split()[1] for line in seen(out)}  # noqa: E731
        wait_for(lambda: set(sent) <= bodies(), "every message sent across the switch", 30, worker)
        assert worker.alive, worker.output()
        assert f"{name}: running version 2" in worker.output()
    finally:
        if worker is not None:
            worker.stop()
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


ROUTED = """
import sluice

app = sluice.App("{name}")


@app.route("GET /version")
def version(event, context):
    return {{"statusCode": 200, "body": "{tag}"}}
"""


def test_gateway_serves_the_new_version_of_a_route_on_the_same_port(tmp_path: Path) -> None:
    """Embedded SQLite state and broker: the follower needs no servers."""
    port = free_port()
    env = {**os.environ, "SLUICE_DATA_DIR": str(tmp_path / "data")}
    src = tmp_path / "src"

    def deploy(tag: str) -> None:
        app = write_app(src, ROUTED.format(name="routed", tag=tag))
        done = subprocess.run([*SLUICE, "deploy", str(app)], env=env, capture_output=True)
        assert done.returncode == 0, done.stderr

    def get() -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/version")
            return conn.getresponse().read()
        finally:
            conn.close()

    deploy("one")
    args = ["gateway", "--app-name", "routed", "--port", str(port), "--poll-interval", "0.3"]
    gateway = Sluice(args, env, tmp_path / "gw.log", tmp_path)
    try:
        wait_port(port, gateway)
        assert get() == b"one"
        deploy("two")
        wait_for(lambda: get() == b"two", "the gateway serves version 2", 30, gateway)
        assert gateway.alive
    finally:
        gateway.stop()
