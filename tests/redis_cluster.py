"""Local Redis servers for tests: a three-node Redis Cluster (session fixture `redis_cluster`) and
single servers a test can start, kill and restart (`RedisServer`).

Use the fixture from a test module with ``from tests.redis_cluster import redis_cluster`` (plus
``# noqa: F401``) and take it through ``request.getfixturevalue`` or a fixture of your own.
Skipped locally, failed in CI (``CI=true``), when ``redis-server`` or ``redis-cli`` is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import free_port

START_TIMEOUT = 15.0


def require_binaries() -> tuple[str, str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server and cli:
        return server, cli
    message = "redis-server and redis-cli are needed to start local Redis servers"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: the tools the tests need must be installed)")
    pytest.skip(message)


def _cli(cli: str, port: int, *args: str, timeout: float = 10.0) -> str:
    result = subprocess.run(
        [cli, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result.stdout + result.stderr


def _wait_until(check: object, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class RedisServer:
    """One ``redis-server`` process in ``directory`` on ``port``, with extra config ``options``
    (e.g. ``["--appendonly", "yes"]``). Start, kill and start again keep the same directory."""

    directory: Path
    port: int = field(default_factory=free_port)
    options: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server, cli = require_binaries()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                server,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--logfile",
                "redis.log",
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_until(lambda: self._ping(cli), f"redis-server on port {self.port}")

    def _ping(self, cli: str) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis-server on port {self.port} exited:\n{log}")
        return "PONG" in _cli(cli, self.port, "ping", timeout=2)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye to clients — as a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


@dataclass
class LocalCluster:
    nodes: list[RedisServer]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"


def start_cluster(directory: Path, size: int = 3) -> LocalCluster:
    """Start ``size`` cluster-enabled servers (no replicas) and join them into one cluster."""
    _, cli = require_binaries()
    nodes = []
    try:
        for index in range(size):
            node = RedisServer(
                directory / f"node{index}",
                options=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    str(free_port()),
                    "--cluster-node-timeout",
                    "5000",
                    "--appendonly",
                    "no",
                ],
            )
            nodes.append(node)
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        output = _cli(
            cli,
            nodes[0].port,
            "--cluster",
            "create",
            *addresses,
            "--cluster-replicas",
            "0",
            "--cluster-yes",
            timeout=60,
        )
        if "[OK] All 16384 slots covered" not in output:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{output}")
        for node in nodes:
            _wait_until(
                lambda node=node: "cluster_state:ok" in _cli(cli, node.port, "cluster", "info"),
                f"cluster_state:ok on port {node.port}",
            )
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return LocalCluster(nodes)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        for node in cluster.nodes:
            node.stop()
