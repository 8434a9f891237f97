"""Benchmarks are scripts, not a package: make ``benchmarks/`` and the repo root importable.

Part of the suite (``make test``): the benchmarks' harness, reports and verdicts are tested like
the rest; the one test that runs wrk skips without it.
"""

from __future__ import annotations

import sys
from pathlib import Path

_BENCH_DIR = Path(__file__).resolve().parents[1]
for _path in (str(_BENCH_DIR), str(_BENCH_DIR.parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
