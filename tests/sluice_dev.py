"""`sluice dev` as a real process tree for tests: started on a free port, ready once it has
written ``dev.json`` into its data directory, stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.servers import free_port

START_TIMEOUT = 30.0


@contextlib.contextmanager
def sluice_dev(
    app: str,
    data_dir: Path,
    log_path: Path,
    *,
    cwd: Path | None = None,
    options: tuple[str, ...] = (),
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield (base URL, process); on exit SIGTERM it and wait for it to end (``returncode``)."""
    port = free_port()
    argv = [sys.executable, "-m", "sluice.cli", "dev", app, "--data-dir", str(data_dir), *options]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*argv, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=cwd
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not (data_dir / "dev.json").exists():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}", proc
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
