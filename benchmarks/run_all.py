"""Run every side-by-side benchmark, one after another (each writes results/<name>.{json,md}).

    .venv/bin/python benchmarks/run_all.py [--only core gateway redis spike topology faults]

They load the whole machine: run them on a quiet one and keep the load notes they print.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "core": ["core_bench.py", "ipc_bench.py"],
    "gateway": ["gateway_bench.py"],
    "redis": ["redis_bench.py"],
    "spike": ["spike.py"],
    "topology": ["topology.py"],
    "faults": ["faults.py"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    args = parser.parse_args()
    failed = []
    for name in args.only:
        print(f"== {name}", flush=True)
        script = HERE / SCRIPTS[name][0]
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
