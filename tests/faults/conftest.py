"""The scenarios live in benchmarks/faults.py (one implementation for the suite and the runner
that writes benchmarks/results/faults.*): make ``benchmarks/`` importable."""

from __future__ import annotations

import sys
from pathlib import Path

_BENCH_DIR = str(Path(__file__).resolve().parents[2] / "benchmarks")
if _BENCH_DIR not in sys.path:
    sys.path.insert(0, _BENCH_DIR)
