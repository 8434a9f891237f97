"""Shared helpers for Sluice's side-by-side benchmarks.

A benchmark script builds a :class:`Report`, adds :class:`Result` rows produced by the
``measure_*`` functions (or by hand), and writes ``results/<name>.json`` and
``results/<name>.md``. Rows in the same *group* are compared: each gets a ratio against the
group's baseline row. Anything that can be measured for a peer can be measured for Sluice
by passing a different callable or process to the same function, in the same run:

    report.add(measure_enqueue("sluice send", lambda n: send_n(queue, n), n, group=G))
    report.add(measure_drain("sluice", SluiceDrain(...), n=n, processes=2,
                             counter=ExecutionCounter(url), group=drain_group(2)))
    report.add(measure_http("sluice gateway", ManagedProcess("sluice", argv, port=port),
                            url, group=HTTP_HELLO_GROUP))

where ``SluiceDrain`` has ``prefill(n)``, ``worker_argv(processes)`` and ``depth()`` (see
:class:`DrainTarget`) and its handler calls ``hit()`` on one ``counter_from_env()`` made
at cold start, like the peers' tasks.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Self

import psutil
import redis
from exec_counter import REDIS_URL_ENV, CounterSnapshot, ExecutionCounter
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
LOG_DIR = RESULTS_DIR / "tmp"

Scalar = int | float | str | bool | None


# -- timing and statistics ---------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Distribution:
    n: int
    p50: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Distribution:
        return cls(
            n=len(samples),
            p50=percentile(samples, 50),
            p99=percentile(samples, 99),
            mean=sum(samples) / len(samples),
            min=min(samples),
            max=max(samples),
        )

    def scaled(self, factor: float) -> Distribution:
        """The same distribution in another unit (e.g. ``1e6`` for seconds to µs)."""
        return Distribution(
            self.n,
            self.p50 * factor,
            self.p99 * factor,
            self.mean * factor,
            self.min * factor,
            self.max * factor,
        )


def sample(fn: Callable[[], object], runs: int, *, warmup: int = 0) -> Distribution:
    """Call ``fn`` ``warmup + runs`` times; the distribution of the last ``runs``, seconds."""
    for _ in range(warmup):
        fn()
    durations = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - start)
    return Distribution.of(durations)


# -- results and reports -----------------------------------------------------------------


@dataclass
class Result:
    """One measured figure of one system, compared with the others in its group."""

    group: str
    """What is being compared, e.g. ``"enqueue"`` or ``"http hello world"``."""
    name: str
    """Who is measured, e.g. ``"celery .delay()"`` or ``"sluice"``."""
    metric: str
    """Unit of ``value``, e.g. ``"msgs/s"``, ``"req/s"``, ``"p50 µs"``."""
    value: float
    baseline: bool = False
    """The row the others in the group are divided by (default: the group's first row)."""
    extra: dict[str, Scalar] = field(default_factory=dict)
    """Secondary figures shown beside the value: latency percentiles, memory, counts."""
    settings: dict[str, Scalar] = field(default_factory=dict)
    """How the system was configured, so the comparison can be judged."""


class Report:
    def __init__(self, name: str, *, results_dir: Path = RESULTS_DIR) -> None:
        self.name = name
        self.results_dir = results_dir
        self.results: list[Result] = []
        self.started = time.time()
        self.machine: dict[str, Scalar] = machine_info()
        self.notes: list[str] = []

    def add(self, result: Result) -> Result:
        self.results.append(result)
        return result

    def ratios(self) -> list[float | None]:
        """Each row's value divided by its group's baseline value (same metric only)."""
        out: list[float | None] = []
        for result in self.results:
            base = self._baseline_of(result)
            same_unit = base.metric == result.metric and base.value
            out.append(result.value / base.value if same_unit else None)
        return out

    def _group(self, group: str) -> list[Result]:
        return [r for r in self.results if r.group == group]

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "started": self.started,
            "finished": time.time(),
            "machine": self.machine,
            "load_after": load_average(),
            "notes": self.notes,
            "results": [
                {**asdict(r), "ratio": ratio}
                for r, ratio in zip(self.results, self.ratios(), strict=True)
            ],
        }

    def markdown(self) -> str:
        lines = [f"# {self.name}", ""]
        machine = ", ".join(f"{k}: {v}" for k, v in self.machine.items())
        lines += [f"Machine: {machine}; load after: {load_average()}", ""]
        ratios = self.ratios()
        current_group = None
        for result, ratio in zip(self.results, ratios, strict=True):
            if result.group != current_group:
                current_group = result.group
                lines += ["", f"## {result.group}", ""]
                lines += ["| system | value | ratio to baseline | details | settings |"]
                lines += ["|---|---:|---:|---|---|"]
            ratio_text = "-" if ratio is None else f"{ratio:.2f}"
            marker = " (baseline)" if result is self._baseline_of(result) else ""
            lines.append(
                f"| {result.name}{marker} | {_fmt(result.value)} {result.metric} | {ratio_text} "
                f"| {_pairs(result.extra)} | {_pairs(result.settings)} |"
            )
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines).strip() + "\n"

    def _baseline_of(self, result: Result) -> Result:
        group = self._group(result.group)
        return next((r for r in group if r.baseline), group[0])

    def write(self) -> tuple[Path, Path]:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        json_path = self.results_dir / f"{self.name}.json"
        md_path = self.results_dir / f"{self.name}.md"
        json_path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")
        md_path.write_text(self.markdown())
        return json_path, md_path

    def finish(self) -> None:
        """Note the load at the end, write the results files and print the table."""
        self.notes.append(f"load average (1/5/15 min) at the end: {load_average()}")
        for path in self.write():
            console().log(f"wrote {path}")
        print(self.markdown())


def _fmt(value: Scalar) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def _pairs(values: Mapping[str, Scalar]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()).replace("|", "\\|")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


def machine_info() -> dict[str, Scalar]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(terse=True),
        "load_before": load_average(),
        # Other engineers' work shares the machine: how busy it was just before we began.
        "cpu busy before %": psutil.cpu_percent(interval=0.5),
    }


# -- processes ---------------------------------------------------------------------------


def bench_env(redis_url: str | None = None, **extra: str) -> dict[str, str]:
    """Environment for child processes: ``benchmarks/`` importable, Redis URL passed on."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
    if redis_url is not None:
        env[REDIS_URL_ENV] = redis_url
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProcessFailed(RuntimeError):
    pass


class ManagedProcess:
    """A child process (and its whole process group) that is started, waited for, stopped.

    Output goes to ``results/tmp/<name>.log`` so a failure can show what the child said.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.env = dict(env) if env is not None else bench_env()
        self.cwd = cwd
        self.log_path = LOG_DIR / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ProcessFailed(f"{self.name} is not running")
        return self._proc.pid

    def start(self, *, timeout: float = 30.0) -> Self:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() reaches every child
            )
        self.started_at = time.time()
        if self.port is not None:
            wait_for_port("127.0.0.1", self.port, timeout=timeout, alive=self.check_alive)
        return self

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise ProcessFailed(
                f"{self.name} exited with {self._proc.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, *, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> Self:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_port(
    host: str, port: int, *, timeout: float = 30.0, alive: Callable[[], None] | None = None
) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


@dataclass(frozen=True)
class Memory:
    rss_mb: float
    uss_mb: float
    processes: int


def tree_memory(pid: int, *, include_root: bool = True) -> Memory:
    """RSS and USS summed over a process (unless ``include_root`` is False) and all its
    descendants.

    RSS double-counts shared pages (a forked worker's copy-on-write heap); USS counts only
    pages private to each process, so the USS sum is the tree's real footprint lower bound.
    """
    root = psutil.Process(pid)
    rss = uss = 0
    count = 0
    for proc in [root, *root.children(recursive=True)][0 if include_root else 1 :]:
        try:
            info = proc.memory_full_info()
        except psutil.Error:  # gone meanwhile, a zombie, or not ours to read
            continue
        rss += info.rss
        uss += info.uss
        count += 1
    return Memory(rss / 2**20, uss / 2**20, count)


# -- progress ----------------------------------------------------------------------------


def console() -> Console:
    return Console(stderr=True)


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console(),
        transient=True,
    )


def wait_until_count(
    description: str,
    total: int,
    poll: Callable[[], int],
    *,
    timeout: float,
    interval: float = 0.02,
    alive: Callable[[], None] | None = None,
) -> int:
    """Poll until ``poll() >= total``, with a progress bar; the last value polled."""
    deadline = time.monotonic() + timeout
    with progress() as bar:
        task = bar.add_task(description, total=total)
        while True:
            value = poll()
            bar.update(task, completed=min(value, total))
            if value >= total:
                return value
            if alive is not None:
                alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{description}: {value}/{total} after {timeout}s")
            time.sleep(interval)


# -- wrk ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    """Socket errors (connect/read/write/timeout) plus non-2xx/3xx responses."""


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"unrecognised wrk duration {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Parse the text ``wrk --latency`` prints (no Lua script involved)."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output lacks {pattern!r}:\n{output}")
        return match

    rps = float(find(r"^Requests/sec:\s+([\d.]+)").group(1))
    p50 = _ms(find(r"^\s+50%\s+(\S+)").group(1))
    p99 = _ms(find(r"^\s+99%\s+(\S+)").group(1))
    requests = int(find(r"^\s+(\d+) requests in").group(1))
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return WrkResult(rps, p50, p99, requests, errors)


@dataclass(frozen=True)
class WrkOptions:
    duration: int = 5
    """Seconds; wrk takes whole seconds only."""
    connections: int = 64
    threads: int = 1
    """One wrk thread leaves the other core to the single-worker server on a 2-core box."""
    timeout: float = 5.0

    def settings(self) -> dict[str, Scalar]:
        return {"wrk": f"-t{self.threads} -c{self.connections} -d{self.duration}s"}


def run_wrk(url: str, options: WrkOptions = WrkOptions(), script: Path | None = None) -> WrkResult:
    """wrk against ``url``; ``script`` is a wrk Lua script (e.g. to POST a body)."""
    argv = [
        "wrk",
        f"-t{options.threads}",
        f"-c{options.connections}",
        f"-d{options.duration}s",
        f"--timeout={options.timeout:g}s",
        "--latency",
        *(["-s", str(script)] if script is not None else []),
        url,
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=options.duration + options.timeout + 60
    )
    if done.returncode != 0:
        raise ProcessFailed(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    return parse_wrk(done.stdout)


# -- measurements ------------------------------------------------------------------------


def measure_enqueue(
    name: str,
    enqueue: Callable[[int], object],
    n: int,
    *,
    group: str = "enqueue",
    warmup: int = 100,
    settings: Mapping[str, Scalar] | None = None,
) -> Result:
    """Time ``enqueue(n)``, which must send ``n`` messages and return once all are sent.

    ``enqueue(warmup)`` runs first, untimed, so connections and imports are warm.
    """
    if warmup:
        enqueue(warmup)
    start = time.perf_counter()
    enqueue(n)
    elapsed = time.perf_counter() - start
    return Result(
        group,
        name,
        "msgs/s",
        n / elapsed,
        extra={"n": n, "seconds": round(elapsed, 3), "µs/msg": round(elapsed / n * 1e6, 1)},
        settings=dict(settings or {}),
    )


class DrainTarget(Protocol):
    """A queue system whose workers run a task body that calls ``counter.hit()``."""

    def prefill(self, n: int) -> None:
        """Enqueue ``n`` no-op messages while no worker runs."""

    def worker_argv(self, processes: int) -> list[str]:
        """Command line of a worker pool that drains the queue with ``processes``.

        It runs with ``benchmarks/`` on ``PYTHONPATH`` and ``BENCH_REDIS_URL`` set to the
        counter's Redis; it is stopped by signalling its whole process group.
        """

    def depth(self) -> int:
        """Messages still in the queue or delivered but not yet acknowledged."""


def measure_drain(
    name: str,
    target: DrainTarget,
    *,
    n: int,
    processes: int,
    counter: ExecutionCounter,
    group: str | None = None,
    timeout: float = 300.0,
    settings: Mapping[str, Scalar] | None = None,
) -> Result:
    """Drain ``n`` pre-enqueued messages; msgs/s between the first and last execution.

    Worker boot is excluded (the clock starts at the first execution, for every system);
    the boot-inclusive time is reported beside it. The run fails if the queue is not
    empty and acknowledged afterwards, and reports duplicates if more than ``n`` ran.
    """
    counter.reset()
    target.prefill(n)
    queued = target.depth()
    if queued != n:
        raise AssertionError(f"{name}: expected {n} queued messages, found {queued}")
    pool = ManagedProcess(
        f"{name} workers", target.worker_argv(processes), env=bench_env(counter.url)
    )
    with pool:
        wait_until_count(
            f"{name} drain",
            n,
            lambda: counter.snapshot().count,
            timeout=timeout,
            alive=pool.check_alive,
        )
        memory = tree_memory(pool.pid)
        wait_until_count(
            f"{name} ack", n, lambda: n - target.depth(), timeout=30, alive=pool.check_alive
        )
        # Let any in-flight duplicate flush before the final count.
        time.sleep(0.05)
        snap: CounterSnapshot = counter.snapshot()
        boot_to_done = (snap.last or time.time()) - pool.started_at
    return Result(
        group or f"drain, {processes} processes",
        name,
        "msgs/s",
        n / snap.span if snap.span > 0 else float("inf"),
        extra={
            "n": n,
            "executed": snap.count,
            "seconds": round(snap.span, 3),
            "with boot s": round(boot_to_done, 2),
            "rss MB": round(memory.rss_mb, 1),
            "uss MB": round(memory.uss_mb, 1),
            "procs": memory.processes,
        },
        settings={"processes": processes, **(settings or {})},
    )


def measure_http(
    name: str,
    server: ManagedProcess,
    url: str,
    *,
    group: str,
    options: WrkOptions = WrkOptions(),
    warmup: int = 1,
    settings: Mapping[str, Scalar] | None = None,
    after_warmup: Callable[[], None] | None = None,
) -> Result:
    """Start ``server``, warm it up with a ``warmup``-second wrk run, then measure it.

    ``after_warmup`` runs between the two (e.g. to empty a queue the warm-up filled, so
    what the measured run accepted can be checked afterwards).
    """
    with server:
        if warmup:
            run_wrk(url, WrkOptions(warmup, options.connections, options.threads, options.timeout))
        if after_warmup is not None:
            after_warmup()
        result = run_wrk(url, options)
        server.check_alive()
        if result.requests <= result.errors:
            raise ProcessFailed(f"{name}: no successful request:\n{server.log_tail()}")
        memory = tree_memory(server.pid)
    return Result(
        group,
        name,
        "req/s",
        result.requests_per_s,
        extra={
            "p50 ms": round(result.p50_ms, 3),
            "p99 ms": round(result.p99_ms, 3),
            "requests": result.requests,
            "errors": result.errors,
            "rss MB": round(memory.rss_mb, 1),
            "uss MB": round(memory.uss_mb, 1),
        },
        settings={**options.settings(), **(settings or {})},
    )


# -- redis -------------------------------------------------------------------------------


def flush_redis_db(url: str) -> None:
    """Empty the benchmark's own Redis db (never db 0, which others may use)."""
    client = redis.Redis.from_url(url)
    with client:
        db = client.connection_pool.connection_kwargs.get("db", 0)
        if int(db) == 0:
            raise ValueError(f"refusing to flush db 0; give the benchmark its own db: {url}")
        client.flushdb()


def redis_persistence(url: str) -> str:
    """How durable an acknowledged write is on this Redis, for the report."""
    with redis.Redis.from_url(url, decode_responses=True) as client:
        config = client.config_get("appendonly") | client.config_get("appendfsync")
        config |= client.config_get("save")
    aof = config.get("appendonly") == "yes"
    rdb = bool(config.get("save"))
    if aof:
        return f"AOF appendfsync={config.get('appendfsync')}"
    return f"RDB save='{config.get('save')}'" if rdb else "none (no AOF, no RDB)"
