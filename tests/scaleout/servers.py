"""Servers a scale-out run owns: a dedicated redis-server with real durability settings, and
tables of its own in a shared PostgreSQL database."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
import redis

from tests.servers import free_port


class RedisServer:
    """``redis-server`` on a free port in a temporary directory, AOF with ``appendfsync always``:
    a send that returned is on disk, so the run's durability is the one the docs promise."""

    def __init__(self, *, fsync: str = "always") -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-redis-"))
        self.fsync = fsync
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> Self:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", self.fsync]
        argv += ["--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as client:
                    client.ping()
                return self
            except redis.ConnectionError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: see {self.dir}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RecordTables:
    """The two tables `topo_app.record` writes, under a random prefix, dropped on exit."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"topo_{secrets.token_hex(4)}"

    def __enter__(self) -> Self:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE {self.prefix}_ids (id text PRIMARY KEY, key text NOT NULL, "
                "seen int NOT NULL DEFAULT 1)"
            )
            conn.execute(
                f"CREATE TABLE {self.prefix}_batches (pid int NOT NULL, size int NOT NULL, "
                "started double precision NOT NULL, ended double precision NOT NULL)"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {self.prefix}_ids, {self.prefix}_batches")

    def processed(self) -> int:
        with psycopg.connect(self.url) as conn:
            row = conn.execute(f"SELECT count(*) FROM {self.prefix}_ids").fetchone()
        return int(row[0]) if row else 0

    def summary(self) -> dict[str, int]:
        """Distinct message ids, distinct request bodies, and extra deliveries."""
        with psycopg.connect(self.url) as conn:
            row = conn.execute(
                f"SELECT count(*), count(DISTINCT key), coalesce(sum(seen - 1), 0) "
                f"FROM {self.prefix}_ids"
            ).fetchone()
        assert row is not None
        return {"ids": int(row[0]), "keys": int(row[1]), "duplicates": int(row[2])}

    def keys(self) -> set[str]:
        with psycopg.connect(self.url) as conn:
            return {k for (k,) in conn.execute(f"SELECT key FROM {self.prefix}_ids")}

    def batches(self) -> list[tuple[float, float]]:
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(f"SELECT started, ended FROM {self.prefix}_batches").fetchall()
        return [(float(a), float(b)) for a, b in rows]


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant (an end before a start at a tie)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak
