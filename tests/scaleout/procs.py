"""Processes the role tests own: `sluice` commands as real subprocesses and a dedicated
redis-server that a test may kill and start again on the same data directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.servers import free_port

SLUICE = [sys.executable, "-m", "sluice.cli"]


def write_app(directory: Path, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "app.py"
    path.write_text(source)
    return path


class Redis:
    """A redis-server of the test's own (AOF, ``appendfsync always`` by default) on a free port;
    `kill` is a SIGKILL, `start` again reuses the directory, so the AOF is replayed."""

    def __init__(self, directory: Path, *, fsync: str = "always") -> None:
        self.port = free_port()
        self.dir = directory
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", self.fsync]
        argv += ["--logfile", str(self.dir / "redis.log")]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as client:
                    if client.ping() and client.info("persistence")["loading"] == 0:
                        return
            except redis.exceptions.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: see {self.dir}/redis.log")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class Sluice:
    """One `sluice ...` process; stdout and stderr go to a log file shown on failure."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        self.log = log
        self._file = log.open("wb")
        self.proc = subprocess.Popen(
            [*SLUICE, *args],
            env={**os.environ, **env},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful drain), then SIGKILL of its whole session if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._file.close()
        return self.proc.returncode


def wait_port(port: int, proc: Sluice, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if not proc.alive or time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {port}:\n{proc.output()}") from None
            time.sleep(0.05)


def wait_for(
    check: Callable[[], bool], what: str, timeout: float, proc: Sluice | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            detail = f"\n--- process output ---\n{proc.output()}" if proc else ""
            raise AssertionError(f"{what}: not within {timeout}s{detail}")
        time.sleep(0.05)
