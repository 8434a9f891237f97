"""The seed's spike, measured: a synchronous design against a buffered one, same machine, same
PostgreSQL with a small connection budget.

(A) sync:     POST /transfers -> function -> PostgreSQL, on every request
(B) buffered: POST /transfers -> durable queue (202) -> batched `settle` -> PostgreSQL,
              with the mapping's max_concurrency sized to the connection budget

PostgreSQL runs as a dedicated cluster this script starts (initdb in a temporary directory, its
own port, max_connections=50), so the system's own instance is untouched. For each design it
reports requests accepted, errors by kind, rows in the database, lost (accepted - rows - DLQ),
peak database connections, time to drain and latency percentiles; it writes
benchmarks/results/spike.{json,md,png}.

    .venv/bin/python benchmarks/spike.py --connections 10000 --requests 200000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import run_load

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SLUICE = ROOT / ".venv" / "bin" / "sluice"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
ACCOUNTS = 100
console = Console()


# -- a dedicated PostgreSQL ------------------------------------------------------------------


class PostgresCluster:
    def __init__(self, port: int, max_connections: int) -> None:
        self.port = port
        self.max_connections = max_connections
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-spike-pg-"))
        self.as_postgres = os.geteuid() == 0  # initdb refuses to run as root

    def _run(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_postgres else []
        subprocess.run([*prefix, *cmd], check=True, capture_output=True)

    def start(self) -> None:
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        self._run(
            str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"
        )
        options = (
            f"-p {self.port} -c max_connections={self.max_connections} "
            f"-c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
            "-c shared_buffers=128MB"
        )
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE payments")

    def url(self, db: str = "payments") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def reset(self) -> None:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS accounts, transfers, transfer_aliases, ledger")

    def stop(self) -> None:
        try:
            self._run(
                str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop"
            )
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# -- sampling the database while the spike runs ----------------------------------------------


@dataclass
class Samples:
    t: list[float] = field(default_factory=list)
    connections: list[int] = field(default_factory=list)
    writer_connections: list[int] = field(default_factory=list)  # held by the writing function
    rows: list[int] = field(default_factory=list)


class Sampler(threading.Thread):
    def __init__(self, url: str, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self.samples = Samples()
        self.stop_event = threading.Event()
        self.t0 = time.time()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop_event.is_set():
                conns, writers = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE application_name IN "
                    "('payments-settle', 'payments-transfer_now')) FROM pg_stat_activity "
                    "WHERE datname = 'payments' AND pid <> pg_backend_pid()"
                ).fetchone()
                try:
                    rows = conn.execute("SELECT count(*) FROM transfers").fetchone()[0]
                except psycopg.errors.UndefinedTable:
                    rows = 0
                self.samples.t.append(time.time() - self.t0)
                self.samples.connections.append(conns)
                self.samples.writer_connections.append(writers)
                self.samples.rows.append(rows)
                self.stop_event.wait(self.interval)


# -- one design ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def http(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def queue_count(data_dir: Path, queue: str) -> int:
    out = subprocess.run(
        [str(SLUICE), "--data-dir", str(data_dir), "queue", "stats", queue, "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stats = json.loads(out)[0]
    return int(stats["visible"] + stats["in_flight"] + stats["delayed"])


def run_design(design: str, pg: PostgresCluster, args: argparse.Namespace) -> dict[str, Any]:
    pg.reset()
    work = Path(tempfile.mkdtemp(prefix=f"sluice-spike-{design}-"))
    port = free_port()
    env = dict(
        os.environ,
        PAYMENTS_DATABASE_URL=pg.url(),
        PAYMENTS_DESIGN=design,
        PAYMENTS_DB_CONNECTIONS=str(args.db_connections),
        SLUICE_MAX_ENVIRONMENTS=str(args.max_environments),
    )
    log = open(work / "sluice.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [
            str(SLUICE),
            "--data-dir",
            str(work / "data"),
            "dev",
            "examples/payments/app.py",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(port)
        for i in range(ACCOUNTS):
            status, _ = http(port, "POST", "/accounts", {"id": f"acct-{i}", "balance": 10**12})
            assert status in (201, 409), status
        sampler = Sampler(pg.url())
        sampler.start()
        body = (
            '{"from": "acct-{a}", "to": "acct-{b}", "amount": 1, '
            '"idempotency_key": "' + design + '-{n}"}'
        )
        body = body.replace("{a}", "0").replace("{b}", "1")
        console.print(
            f"[bold]{design}[/bold]: {args.requests:,} requests over "
            f"{args.connections:,} connections ..."
        )
        t0 = time.perf_counter()
        load = run_load(
            f"http://127.0.0.1:{port}/transfers",
            connections=args.connections,
            requests=args.requests,
            body=body,
            processes=args.load_processes,
            timeout=args.timeout,
        )
        accept_status = 202 if design == "buffered" else 201
        accepted = load.statuses.get(accept_status, 0)
        # Drain: wait until every accepted transfer is a row or in the DLQ (or progress stops).
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"{design}: draining", total=accepted)
            last, last_change = -1, time.monotonic()
            while True:
                rows = sampler.samples.rows[-1] if sampler.samples.rows else 0
                progress.update(task, completed=min(rows, accepted))
                if rows != last:
                    last, last_change = rows, time.monotonic()
                if rows >= accepted or time.monotonic() - last_change > args.drain_stall:
                    break
                time.sleep(0.5)
        drained_at = time.perf_counter() - t0
        time.sleep(1.0)
        sampler.stop_event.set()
        sampler.join()
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            rows = conn.execute("SELECT count(*) FROM transfers").fetchone()[0]
            settled = conn.execute(
                "SELECT count(*) FROM transfers WHERE status = 'settled'"
            ).fetchone()[0]
            balance_sum = conn.execute("SELECT sum(balance) FROM accounts").fetchone()[0]
        in_dlq = queue_count(work / "data", "transfers-dlq") if design == "buffered" else 0
        still_queued = queue_count(work / "data", "transfers") if design == "buffered" else 0
        errors = {str(k): v for k, v in load.statuses.items() if k != accept_status}
        errors.update(load.errors)
        return {
            "design": design,
            "requests": load.sent,
            "accepted": accepted,
            "errors": errors,
            "rows": rows,
            "settled": settled,
            "in_dlq": in_dlq,
            "still_queued": still_queued,
            "lost": accepted - rows - in_dlq - still_queued,
            "not_stored": load.sent - accepted,
            "money_conserved": int(balance_sum) == ACCOUNTS * 10**12,
            "peak_db_connections": max(sampler.samples.connections, default=0),
            "peak_writer_connections": max(sampler.samples.writer_connections, default=0),
            "load_seconds": round(load.duration, 2),
            "drain_seconds": round(drained_at, 2),
            "p50_ms": round(load.percentile(50), 1),
            "p99_ms": round(load.percentile(99), 1),
            "timeline": {k: dict(v) for k, v in sorted(load.timeline.items())},
            "load_offset": load.started_at - sampler.t0,  # timeline second 0 on the sample axis
            "samples": sampler.samples.__dict__,
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


# -- output ----------------------------------------------------------------------------------


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Spike: {args.requests:,} requests over {args.connections:,} concurrent connections; "
        f"PostgreSQL max_connections={args.max_db_connections}; buffered mapping "
        f"max_concurrency={args.db_connections}; sync design capped at "
        f"{args.max_environments} environments.",
        "",
        "| design | accepted | errors by kind | rows in DB | in DLQ | lost | peak DB conns "
        "(writer / all) | drain s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        errors = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["errors"].items())) or "none"
        lines.append(
            f"| {r['design']} | {r['accepted']:,} | {errors} | {r['rows']:,} | {r['in_dlq']:,} | "
            f"{r['lost']:,} | {r['peak_writer_connections']} / {r['peak_db_connections']} | "
            f"{r['drain_seconds']} | "
            f"{r['p50_ms']} | {r['p99_ms']} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        3, len(results), figsize=(6 * len(results), 9), sharex="col", squeeze=False
    )
    for col, r in enumerate(results):
        secs = sorted(int(s) for s in r["timeline"])
        ok = [r["timeline"][s].get("2xx", 0) for s in secs]
        bad = [sum(v for k, v in r["timeline"][s].items() if k != "2xx") for s in secs]
        x = [s + r["load_offset"] for s in secs]
        ax = axes[0][col]
        ax.step(x, ok, where="post", label="accepted/s")
        ax.step(x, bad, where="post", label="refused or failed/s", color="tab:red")
        ax.set_title(f"({'A' if r['design'] == 'sync' else 'B'}) {r['design']}")
        ax.set_ylabel("requests/s")
        ax.legend()
        t, rows = r["samples"]["t"], r["samples"]["rows"]
        rate = [(rows[i] - rows[i - 1]) / (t[i] - t[i - 1]) for i in range(1, len(t))]
        axes[1][col].plot(t[1:], rate, color="tab:green")
        axes[1][col].set_ylabel("rows written/s")
        axes[2][col].plot(t, r["samples"]["connections"], color="tab:purple", label="all")
        axes[2][col].plot(
            t, r["samples"]["writer_connections"], color="tab:orange", label="writing function"
        )
        axes[2][col].axhline(r["max_db"], color="gray", linestyle="--", label="max_connections")
        axes[2][col].set_ylabel("DB connections")
        axes[2][col].set_xlabel("seconds")
        axes[2][col].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description="The seed's spike: sync vs buffered, measured.")
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--max-db-connections", type=int, default=50)
    p.add_argument(
        "--db-connections",
        type=int,
        default=8,
        help="the buffered mapping's max_concurrency (one connection each)",
    )
    p.add_argument(
        "--max-environments",
        type=int,
        default=200,
        help="account-wide concurrent environments (Lambda's account concurrency)",
    )
    p.add_argument("--load-processes", type=int, default=2)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--drain-stall", type=float, default=60.0)
    p.add_argument("--designs", default="sync,buffered")
    p.add_argument("--pg-port", type=int, default=55432)
    args = p.parse_args()
    pg = PostgresCluster(args.pg_port, args.max_db_connections)
    pg.start()
    try:
        results = []
        for design in args.designs.split(","):
            r = run_design(design, pg, args)
            r["max_db"] = args.max_db_connections
            results.append(r)
            console.print({k: v for k, v in r.items() if k not in ("timeline", "samples")})
    finally:
        pg.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "spike.json").write_text(json.dumps({"args": vars(args), "results": results}))
    md = table(results, args)
    (RESULTS / "spike.md").write_text(md)
    plot(results, RESULTS / "spike.png")
    console.print(md)


if __name__ == "__main__":
    main()
