"""Where a drained batch's time goes, and what an idle worker costs.

    .venv/bin/python benchmarks/drain_phases.py [--n 100000]

Runs the core benchmark's drain (``core_app``: batch_size=100, max_concurrency=2) with
`phase_timing` imported into the worker: the mean latency of a batch's receive, invoke and
delete as its poller sees them, and the writer thread's wall and CPU time per group of operations.
Then the same worker with nothing to do: its CPU use over 5 s (idle long polls). Writes
``benchmarks/results/drain_phases.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
from core_bench import SluiceDrain, data_dir
from exec_counter import DEFAULT_REDIS_URL, ExecutionCounter
from harness import BENCH_DIR, ManagedProcess, Report, Result, flush_redis_db, measure_drain

GROUP = "drain of 100-message batches, 2 environments: mean per batch"
BOOT = "import phase_timing; from sluice.cli import main; main()"


class TimedDrain(SluiceDrain):
    """The core benchmark's drain, its worker started with `phase_timing` imported."""

    def __init__(self, path: Path, out: Path) -> None:
        super().__init__(path)
        self.out = out

    def worker_argv(self, processes: int) -> list[str]:
        argv = super().worker_argv(processes)
        sluice_args = argv[3:]  # after "env VAR=... sluice"
        # The benchmarks (for phase_timing) before whatever the caller put first.
        python_path = os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))
        return [
            "env",
            argv[1],
            f"SLUICE_PHASES_OUT={self.out}",
            f"PYTHONPATH={python_path}",
            sys.executable,
            "-c",
            f"import sys; sys.argv = ['sluice', *{sluice_args!r}]; {BOOT}",
        ]


def idle_cpu_percent(seconds: float = 5.0) -> float:
    """CPU of a `sluice worker` of core_app with nothing to do, after it settled."""
    with data_dir() as path:
        worker = ManagedProcess("idle worker", SluiceDrain(path).worker_argv(2))
        with worker:
            time.sleep(3.0)
            tree = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(True)]
            before = sum(sum(p.cpu_times()[:2]) for p in tree)
            time.sleep(seconds)
            after = sum(sum(p.cpu_times()[:2]) for p in tree)
    return (after - before) / seconds * 100


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="Phases of a drained batch; an idle worker.")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--name", default="drain_phases")
    args = parser.parse_args(argv)
    report = Report(args.name)
    counter = ExecutionCounter(DEFAULT_REDIS_URL)
    flush_redis_db(DEFAULT_REDIS_URL)
    with tempfile.TemporaryDirectory() as tmp, data_dir() as path:
        out = Path(tmp) / "phases.json"
        target = TimedDrain(path, out)
        try:
            drained = measure_drain(
                "sluice worker (timed)", target, n=args.n, processes=2, counter=counter
            )
        finally:
            target.close()
        phases = json.loads(out.read_text())
    report.add(drained)
    for name, entry in sorted(phases.items()):
        report.add(Result(GROUP, name, "ms", round(entry["mean ms"], 3), extra={"n": entry["n"]}))
    report.add(
        Result(
            "idle worker (core_app, nothing queued)",
            "CPU of the worker tree",
            "% of a core",
            round(idle_cpu_percent(), 1),
        )
    )
    report.notes.append(
        "Latencies as the caller sees them (queueing behind the other poller's operations "
        "included); a writer group is what the SQLite writer thread runs in one go."
    )
    report.write()
    print(report.markdown())


if __name__ == "__main__":
    main(sys.argv[1:])
