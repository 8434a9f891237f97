"""Fault injection: N messages (100,000 by default) flow through a Sluice app whose consumer
records every processed message number in PostgreSQL, while one fault is injected per scenario:

  workers   SIGKILL a `sluice worker` 50 times (two workers on a dedicated Redis; restarted)
  gateway   SIGKILL the `sluice gateway` 10 times (restarted) under HTTP load
  redis     SIGKILL and restart the dedicated Redis (appendonly, appendfsync always) 3 times
  postgres  the consumer's PostgreSQL database refuses connections for 10 s
  disk      the embedded broker's data directory (a small tmpfs) fills up: 503, then recovery

Each scenario reports accepted (202 answers, or sends that returned), processed, in the DLQ,
lost (accepted but neither processed nor dead-lettered: must be 0) and duplicates (deliveries
beyond the first). Writes benchmarks/results/faults.{json,md}.

    .venv/bin/python benchmarks/faults.py                 # every scenario, 100,000 messages each
    SLUICE_FAULTS_MESSAGES=20000 .venv/bin/python benchmarks/faults.py --only disk  # quick look

(Quick looks need about 20,000 messages for the gateway scenario: each of its 10 restarts
refuses connections for a second or two, and those requests use up the load generator's budget.)

`make faults` runs the same scenarios as tests (tests/faults), asserting nothing is lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import LoadResult, run_load

from sluice.client import Client
from sluice.config import Settings
from sluice.platform import open_broker

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
APP = ROOT / "tests" / "faults" / "consumer_app.py"
SLUICE = [sys.executable, "-m", "sluice.cli"]
QUEUE, DLQ = "inbox", "inbox-dlq"
DATABASE = "sluice_faults"
ADMIN_URL = os.environ.get(
    "SLUICE_FAULTS_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
LOAD_CONNECTIONS = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def messages_per_run() -> int:
    return int(os.environ.get("SLUICE_FAULTS_MESSAGES", "100000"))


# -- outcome ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    scenario: str
    fault: str
    messages: int
    injections: int = 0
    accepted: int = 0
    processed: int = 0
    in_dlq: int = 0
    lost: int = 0
    duplicates: int = 0
    stored_unacknowledged: int = 0  # processed or dead-lettered, though the sender got no 202
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)


def account(
    outcome: Outcome, accepted: set[int], processed: dict[int, int], dead: list[int]
) -> Outcome:
    dlq = set(dead)
    outcome.accepted = len(accepted)
    outcome.processed = len(processed)
    outcome.in_dlq = len(dlq)
    outcome.lost = len(accepted - processed.keys() - dlq)
    outcome.duplicates = (
        sum(d - 1 for d in processed.values()) + len(dead) - len(dlq) + len(dlq & processed.keys())
    )
    outcome.stored_unacknowledged = len((processed.keys() | dlq) - accepted)
    return outcome


# -- the recording database ------------------------------------------------------------------


class Ledger:
    """The consumer's PostgreSQL database, on the system instance: a dedicated database the
    suite creates, so refusing its connections touches nothing else."""

    def __init__(self, admin_url: str = ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.url = admin_url.rsplit("/", 1)[0] + f"/{DATABASE}"

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5)

    def setup(self) -> None:
        with self._admin() as conn:
            if self._exists(conn):
                conn.execute(f"ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS true")
            else:
                conn.execute(f"CREATE DATABASE {DATABASE}")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS processed")
            conn.execute("CREATE TABLE processed (n bigint PRIMARY KEY, deliveries int NOT NULL)")

    @staticmethod
    def _exists(conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
        return row is not None

    def count(self) -> int:
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM processed").fetchone()
            return int(row[0]) if row else 0

    def deliveries(self) -> dict[int, int]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return dict(conn.execute("SELECT n, deliveries FROM processed").fetchall())

    def refuse(self) -> None:
        """New connections fail and existing ones are cut, as when the server goes away."""
        with self._admin() as conn:
            conn.execute(f"ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS false")
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (DATABASE,),
            )

    def allow(self) -> None:
        with self._admin() as conn:
            conn.execute(f"ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS true")


# -- processes -------------------------------------------------------------------------------


class Role:
    """One `sluice` process (dev, gateway or worker) in its own session, so that after a
    SIGKILL of the role itself, anything it left behind can be found and counted."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], work: Path) -> None:
        self.name, self.args, self.env, self.work = name, args, env, work
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.starts = 0
        self.orphans = 0  # processes still alive in the session after the role was SIGKILLed

    @property
    def log(self) -> Path:
        return self.work / f"{self.name}.log"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                env=self.env,
                cwd=self.work,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.monotonic()
        self.starts += 1

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the banner's last line is in the log (the role has started every part)."""
        deadline = time.monotonic() + timeout
        mark = self.starts
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            if self.log.read_text(errors="replace").count("press Ctrl-C to stop") >= mark:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start in {timeout}s")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)
        self.orphans += self._reap_session()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._reap_session()

    def _reap_session(self) -> int:
        assert self.proc is not None
        sid = self.proc.pid  # start_new_session: the session id is the leader's pid
        left = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getsid(p.pid) == sid:
                    left.append(p)
        # Give environments a moment to notice their parent is gone before counting them.
        _, alive = psutil.wait_procs(left, timeout=2)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        return len(alive)


class Redis:
    """A dedicated redis-server: temporary directory, free port, AOF fsynced on every write."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.dir = work / "redis"
        self.dir.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with (self.dir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--dir", str(self.dir), "--save", "", "--protected-mode", "no"),
                    *("--appendonly", "yes", "--appendfsync", "always"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._ping():
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def _ping(self) -> bool:
        with redis.Redis(port=self.port, socket_timeout=1) as client:
            try:
                return bool(client.ping())
            except redis.exceptions.BusyLoadingError:  # still replaying the AOF
                return False
            except redis.exceptions.ConnectionError:
                return False

    def crash(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


# -- one deployment of the app -----------------------------------------------------------------


class Deployment:
    """The app's roles plus a client on the same broker, and how to read back what happened."""

    def __init__(self, work: Path, ledger: Ledger, broker_url: str | None = None) -> None:
        self.work, self.ledger, self.broker_url = work, ledger, broker_url
        self.data_dir = work / "data"
        self.roles: list[Role] = []
        self.port = free_port()
        self._client: Client | None = None

    def env(self, name: str) -> dict[str, str]:
        env = dict(os.environ, FAULTS_DATABASE_URL=self.ledger.url, SLUICE_MAX_ENVIRONMENTS="16")
        env["SLUICE_DATA_DIR"] = str(self.work / name)
        if self.broker_url:
            env["SLUICE_BROKER"] = self.broker_url
        else:
            env.pop("SLUICE_BROKER", None)
        return env

    def dev(self) -> Role:
        args = [*SLUICE, "dev", str(APP), "--data-dir", str(self.data_dir)]
        return self._add(Role("dev", [*args, "--port", str(self.port)], self.env("dev"), self.work))

    def gateway(self) -> Role:
        args = [*SLUICE, "gateway", str(APP), "--port", str(self.port)]
        return self._add(Role("gateway", args, self.env("gateway"), self.work))

    def worker(self, i: int) -> Role:
        args = [*SLUICE, "worker", str(APP)]
        return self._add(Role(f"worker{i}", args, self.env(f"worker{i}"), self.work))

    def _add(self, role: Role) -> Role:
        self.roles.append(role)
        role.start()
        role.wait_ready()
        return role

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{QUEUE}"

    def client(self) -> Client:
        if self._client is None:
            if self.broker_url:
                self._client = Client(broker_url=self.broker_url)
            else:
                self._client = Client(
                    data_dir=self.data_dir,
                    broker_url="sqlite:///" + str(self.data_dir / "broker.db"),
                )
        return self._client

    def depth(self) -> int:
        s = self.client().stats(QUEUE)
        return s.visible + s.in_flight + s.delayed

    def progress(self) -> int:
        """Messages stored so far: recorded by the consumer, or still in the queue."""
        return self.ledger.count() + self.depth()

    def drain(self, timeout: float) -> bool:
        """Until the queue is empty (every message processed or dead-lettered)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.depth() == 0:
                return True
            time.sleep(0.5)
        return False

    def dead_letters(self) -> list[int]:
        settings = Settings(data_dir=self.data_dir, broker_url=self.client().settings.broker_url)

        async def read() -> list[int]:
            broker = open_broker(settings)
            await broker.start()
            numbers: list[int] = []
            try:
                while batch := await broker.receive(DLQ, 1000, visibility_timeout=3600):
                    numbers += [json.loads(m.body)["n"] for m in batch]
            finally:
                await broker.close()
            return numbers

        return asyncio.run(read())

    def close(self) -> None:
        for role in self.roles:
            role.stop()
        if self._client is not None:
            self._client.close()


@contextlib.contextmanager
def deployment(ledger: Ledger, work: Path, broker_url: str | None = None) -> Iterator[Deployment]:
    """A fresh ledger and a deployment whose roles are all stopped on the way out."""
    ledger.setup()
    d = Deployment(work, ledger, broker_url)
    try:
        yield d
    finally:
        d.close()


# -- load ------------------------------------------------------------------------------------


class HttpLoad(threading.Thread):
    """benchmarks/loadgen.py against the queue route, in the background: a 202 is accepted."""

    def __init__(self, url: str, requests: int) -> None:
        super().__init__(daemon=True)
        self.url, self.requests = url, requests
        self.result: LoadResult | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = run_load(
                self.url,
                connections=LOAD_CONNECTIONS,
                requests=self.requests,
                body='{"n": {n}}',
                processes=1,
                timeout=10.0,
                record_accepted=True,
            )
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout: float = 900.0) -> LoadResult:
        self.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.result is not None, "the load generator did not finish"
        return self.result


def load_notes(res: LoadResult) -> dict[str, Any]:
    return {
        "statuses": dict(res.statuses),
        "errors": dict(res.errors),
        "load_seconds": res.duration,
    }


def wait_for(condition: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


def at_fractions(count: int, first: float, last: float) -> list[float]:
    return [first + (last - first) * i / max(1, count - 1) for i in range(count)]


# -- the scenarios ---------------------------------------------------------------------------


def scenario_workers(ledger: Ledger, n: int, kills: int = 50) -> Outcome:
    """Two `sluice worker` processes on a dedicated Redis; the messages are sent with the Client,
    paced over about a minute; every 1.2 s one of the workers is SIGKILLed (once it has run for
    a second) and restarted at once."""
    out = Outcome("workers", f"SIGKILL a worker {kills} times", n)
    with tempfile.TemporaryDirectory(prefix="sluice-faults-") as tmp:
        redis = Redis(Path(tmp))
        redis.start()
        try:
            with deployment(ledger, Path(tmp), redis.url) as d:
                workers = [d.worker(0), d.worker(1)]
                accepted: set[int] = set()
                sender = threading.Thread(target=_paced_send, args=(redis.url, n, 60.0, accepted))
                t0 = time.monotonic()
                sender.start()
                for k in range(kills):
                    target = workers[k % 2]
                    time.sleep(max(0.0, 1.2 - (time.monotonic() - target.started)))
                    target.kill()
                    target.start()
                    out.injections += 1
                sender.join()
                drained = d.drain(300)
                out.seconds = time.monotonic() - t0
                out.notes = {
                    "drained": drained,
                    "orphaned_processes": sum(w.orphans for w in workers),
                }
                return account(out, accepted, ledger.deliveries(), d.dead_letters())
        finally:
            redis.stop()


def _paced_send(url: str, n: int, seconds: float, accepted: set[int]) -> None:
    chunk = 250
    started = time.monotonic()
    with Client(broker_url=url) as client:
        for first in range(0, n, chunk):
            numbers = range(first, min(n, first + chunk))
            client.send_batch(QUEUE, [{"n": i} for i in numbers])
            accepted.update(numbers)
            due = started + seconds * (first + chunk) / n
            time.sleep(max(0.0, due - time.monotonic()))


def scenario_gateway(ledger: Ledger, n: int, kills: int = 10) -> Outcome:
    """HTTP load through `sluice gateway` on Redis, two workers; the gateway is SIGKILLed at
    evenly spaced points of progress and restarted at once."""
    out = Outcome("gateway", f"SIGKILL the gateway {kills} times", n)
    with tempfile.TemporaryDirectory(prefix="sluice-faults-") as tmp:
        redis = Redis(Path(tmp))
        redis.start()
        try:
            with deployment(ledger, Path(tmp), redis.url) as d:
                gateway = d.gateway()
                d.worker(0), d.worker(1)
                return _under_http_load(d, out, at_fractions(kills, 0.05, 0.6), _restart(gateway))
        finally:
            redis.stop()


def _restart(role: Role) -> Callable[[], None]:
    def inject() -> None:
        role.kill()
        role.start()
        role.wait_ready()

    return inject


def scenario_redis(ledger: Ledger, n: int, restarts: int = 3) -> Outcome:
    """HTTP load through a gateway and two workers on a dedicated Redis, which is SIGKILLed and
    restarted (replaying its AOF) at 20 %, 45 % and 70 % of the run."""
    out = Outcome("redis", f"SIGKILL + restart Redis {restarts} times", n)
    with tempfile.TemporaryDirectory(prefix="sluice-faults-") as tmp:
        redis = Redis(Path(tmp))
        redis.start()

        def inject() -> None:
            redis.crash()
            time.sleep(0.5)
            redis.start()

        try:
            with deployment(ledger, Path(tmp), redis.url) as d:
                d.gateway()
                d.worker(0), d.worker(1)
                return _under_http_load(d, out, at_fractions(restarts, 0.2, 0.7), inject)
        finally:
            redis.stop()


def scenario_postgres(ledger: Ledger, n: int, outage: float = 10.0) -> Outcome:
    """HTTP load on `sluice dev` (embedded SQLite); at 30 % the consumer's database refuses
    connections for ``outage`` seconds
    (10 by default): its batches fail and come back after the visibility timeout."""
    out = Outcome("postgres", f"PostgreSQL refuses connections for {outage:g} s", n)

    def inject() -> None:
        ledger.refuse()
        try:
            time.sleep(outage)
        finally:
            ledger.allow()

    with (
        tempfile.TemporaryDirectory(prefix="sluice-faults-") as tmp,
        deployment(ledger, Path(tmp)) as d,
    ):
        d.dev()
        return _under_http_load(d, out, [0.3], inject)


def _under_http_load(
    d: Deployment,
    out: Outcome,
    fractions: list[float],
    inject: Callable[[], None],
    accepted: set[int] | None = None,
) -> Outcome:
    t0 = time.monotonic()
    load = HttpLoad(d.url, out.messages)
    load.start()
    for fraction in fractions:
        target = fraction * out.messages

        def reached(target: float = target) -> bool:
            return d.progress() >= target or not load.is_alive()

        if not wait_for(reached, 900):
            break
        if not load.is_alive():
            break
        inject()
        out.injections += 1
    res = load.finish()
    drained = d.drain(300)
    out.seconds = time.monotonic() - t0
    out.notes = {**load_notes(res), "drained": drained}
    if accepted is not None:
        accepted.update(res.accepted)
    return account(out, set(res.accepted), d.ledger.deliveries(), d.dead_letters())


# -- disk full -------------------------------------------------------------------------------


class Tmpfs:
    """A small tmpfs mounted for the data directory (needs CAP_SYS_ADMIN)."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path, self.size_mb = path, size_mb

    def mount(self) -> str | None:
        """Mount; returns why it could not, or None."""
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
        )
        return None if done.returncode == 0 else (done.stderr.strip() or "mount failed")

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)


class Filler(threading.Thread):
    """Fills the file system and keeps it full: any space freed (a WAL truncated, a log rotated)
    is taken again within a few milliseconds, until ``release``."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.full = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while not self.stop.is_set():
                wrote = self._fill(fd)
                if not wrote:
                    self.full.set()
                    self.stop.wait(0.005)
        finally:
            os.close(fd)

    @staticmethod
    def _fill(fd: int) -> int:
        wrote = 0
        for size in (1 << 20, 1 << 12, 1 << 8):
            block = b"\0" * size
            while True:
                try:
                    wrote += os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        return wrote

    def release(self) -> None:
        self.stop.set()
        self.join(10)
        self.path.unlink()


class Prober:
    """POSTs one at a time, numbered -1, -2, ... (apart from the load's numbers), keeping the
    numbers answered 202 so they are accounted for like the load's."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.accepted: set[int] = set()
        self.refused: set[int] = set()  # answered 503: must not have been stored

    def post(self) -> int:
        """One request; its status (0 when the request failed)."""
        self.sent += 1
        n = -self.sent
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", f"/{QUEUE}", body=json.dumps({"n": n}).encode())
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            return 0
        finally:
            conn.close()
        if response.status == 202:
            self.accepted.add(n)
        elif response.status == 503:
            self.refused.add(n)
        return response.status

    def until(self, status: int, timeout: float) -> tuple[float | None, list[int]]:
        """Probe until an answer is ``status``: seconds it took (None: never), statuses before."""
        t0 = time.monotonic()
        seen: list[int] = []
        while time.monotonic() - t0 < timeout:
            got = self.post()
            if got == status:
                return round(time.monotonic() - t0, 2), seen
            seen.append(got)
            time.sleep(0.01)
        return None, seen

    def during(self, seconds: float) -> list[int]:
        deadline = time.monotonic() + seconds
        statuses = []
        while time.monotonic() < deadline:
            statuses.append(self.post())
            time.sleep(0.01)
        return statuses


def tally(statuses: list[int]) -> dict[str, int]:
    return {str(s): statuses.count(s) for s in sorted(set(statuses))}


def scenario_disk(ledger: Ledger, n: int, full_for: float = 5.0) -> Outcome:
    """HTTP load on `sluice dev` whose data directory is a 128 MB tmpfs. At 30 % the file system
    is filled and kept full (space freed is taken again at once). SQLite still commits into space
    its own files hold (a WAL restarted after a checkpoint, pages freed by the consumer's
    deletes), so 202s go on as long as a commit fits; a send that does not fit must get 503,
    never 202. Probe requests (numbered apart from the load) run until the first 503 and then
    ``full_for`` seconds (5 by default) more: every probe answered 202 must be processed, none
    answered 503 may have been stored. Then the space is freed and the gateway must answer 202
    again."""
    out = Outcome("disk", f"data directory full (503 for {full_for:g} s)", n)
    with tempfile.TemporaryDirectory(prefix="sluice-faults-") as tmp:
        fs = Tmpfs(Path(tmp) / "data", size_mb=128)
        if (why := fs.mount()) is not None:
            out.notes = {"skipped": f"cannot mount a tmpfs: {why}"}
            return out
        try:
            with deployment(ledger, Path(tmp)) as d:
                d.dev()
                d.depth()  # open the client's broker while there is room
                prober = Prober(d.port)
                notes: dict[str, Any] = {}

                def inject() -> None:
                    filler = Filler(fs.path / "filler")
                    filler.start()
                    try:
                        if not filler.full.wait(30):
                            raise RuntimeError("the tmpfs did not fill up")
                        took, before = prober.until(503, 120.0)
                        notes["seconds_full_to_first_503"] = took
                        notes["full_before_first_503"] = tally(before)
                        notes["full_after_first_503"] = tally(prober.during(full_for))
                    finally:
                        filler.release()
                    took, before = prober.until(202, 60.0)
                    notes["seconds_freed_to_first_202"] = took
                    notes["freed_before_first_202"] = tally(before)

                load_accepted: set[int] = set()
                result = _under_http_load(d, out, [0.3], inject, load_accepted)
                processed, dead = ledger.deliveries(), d.dead_letters()
                notes["probes_answered_503_yet_stored"] = len(
                    prober.refused & (processed.keys() | set(dead))
                )
                notes["probes_202_while_full"] = notes["full_before_first_503"].get(
                    "202", 0
                ) + notes["full_after_first_503"].get("202", 0)
                result.notes |= notes
                return account(result, load_accepted | prober.accepted, processed, dead)
        finally:
            fs.unmount()


SCENARIOS: dict[str, Callable[[Ledger, int], Outcome]] = {
    "workers": scenario_workers,
    "gateway": scenario_gateway,
    "redis": scenario_redis,
    "postgres": scenario_postgres,
    "disk": scenario_disk,
}


# -- report ----------------------------------------------------------------------------------


LEGEND = """\
- **accepted**: requests answered 202 (load generator and probes), or sends that returned
- **processed**: distinct messages the consumer committed to PostgreSQL
- **lost**: accepted, but neither processed nor in the dead-letter queue (must be 0)
- **duplicates**: deliveries beyond the first (at-least-once: a batch processed, then its worker
  or broker died before the delete)
- **stored without 202**: processed though the client saw a failure (its answer was lost with the
  gateway, or Redis stored the send before the connection dropped); never counted as accepted
"""


def write_results(outcomes: list[Outcome], command: str, load: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faults.json").write_text(
        json.dumps(
            {"command": command, "load": load, "outcomes": [asdict(o) for o in outcomes]}, indent=2
        )
    )
    render(command, load, outcomes)


def render(command: str, load: str, outcomes: list[Outcome]) -> None:
    lines = [
        "# Fault injection",
        "",
        f"`{command}` (machine: {load})",
        "",
        "| scenario | fault | injections | accepted | processed | in DLQ | lost | duplicates "
        "| stored without 202 | seconds |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.scenario} | {o.fault} | {o.injections} | {o.accepted:,} | {o.processed:,} "
            f"| {o.in_dlq:,} | {o.lost:,} | {o.duplicates:,} | {o.stored_unacknowledged:,} "
            f"| {o.seconds:.0f} |"
        )
    lines += ["", LEGEND, "## Scenarios", ""]
    for o in outcomes:
        how = " ".join((SCENARIOS[o.scenario].__doc__ or "").split())
        lines.append(f"- **{o.scenario}**: {how}")
        for key, value in sorted(o.notes.items()):
            shown = f"{value:.1f}" if isinstance(value, float) else json.dumps(value)
            lines.append(f"  - {key.replace('_', ' ')}: {shown}")
    (RESULTS / "faults.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS))
    parser.add_argument(
        "--render", action="store_true", help="rewrite faults.md from faults.json, run nothing"
    )
    args = parser.parse_args()
    if args.render:
        saved = json.loads((RESULTS / "faults.json").read_text())
        render(saved["command"], saved["load"], [Outcome(**o) for o in saved["outcomes"]])
        return
    n = messages_per_run()
    ledger = Ledger()
    outcomes = []
    load_before = os.getloadavg()
    for name in args.only or list(SCENARIOS):
        outcome = SCENARIOS[name](ledger, n)
        print(json.dumps(asdict(outcome)), flush=True)
        outcomes.append(outcome)
    load_after = os.getloadavg()
    command = "SLUICE_FAULTS_MESSAGES={} .venv/bin/python benchmarks/faults.py{}".format(
        n, "".join(f" --only {s}" for s in args.only or [])
    )
    load = (
        f"{os.cpu_count()} cores; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after"
    )
    write_results(outcomes, command, load)


if __name__ == "__main__":
    main()
