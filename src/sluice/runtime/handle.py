"""The supervisor's handle on one execution environment: its socket, pid, output and limits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from typing import Any

from sluice.runtime import wire
from sluice.runtime.environment import EnvironmentConfig

PAGE = os.sysconf("SC_PAGE_SIZE")
MAX_CAPTURE = 16 << 20  # at most this much of one invocation's output is kept (the tail)


class EnvironmentLost(Exception):
    """The environment's socket closed: its process ended (or was killed) mid-invocation."""


class _Protocol(asyncio.Protocol):
    __slots__ = ("_frames", "closed", "waiter")

    def __init__(self) -> None:
        self._frames = wire.FrameBuffer()
        self.waiter: asyncio.Future[wire.Frame] | None = None
        self.closed = False

    def data_received(self, data: bytes) -> None:
        # The usual answer arrives whole in one read: parse it in place, no buffering.
        frame = None if self._frames else wire.whole(data)
        if frame is not None:
            self._answer(frame)
            return
        for frame in self._frames.feed(data):
            self._answer(frame)

    def _answer(self, frame: wire.Frame) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(EnvironmentLost())


class EnvironmentHandle:
    """One environment as the supervisor sees it. Not thread-safe: lives on one event loop."""

    def __init__(self, config: EnvironmentConfig, memfd: int) -> None:
        self.config = config
        self.function = config.function
        self.memfd = memfd
        self.pid: int | None = None
        self.provisioned = config.provisioned
        self.cold = not config.provisioned  # its first invocation pays (and reports) the init
        self.busy = False
        self.idle_since = time.monotonic()
        self.deadline = float("inf")
        self.kill_reason: str | None = None  # "timeout" | "oom" | "closed"
        self.peak_rss = 0
        self._loop = asyncio.get_running_loop()
        self.exit_status: asyncio.Future[int | None] = self._loop.create_future()
        self._limit = config.memory << 20
        self._statm: int | None = None
        self._transport: asyncio.Transport | None = None
        self._sock: socket.socket | None = None
        self._protocol = _Protocol()

    async def connect(self, sock: socket.socket) -> None:
        self._sock = sock  # uvloop transports work on a dup: this one must be closed too
        transport, _ = await self._loop.create_unix_connection(lambda: self._protocol, sock=sock)
        self._transport = transport

    def forked(self, pid: int) -> None:
        self.pid = pid
        with contextlib.suppress(OSError):
            self._statm = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
        if self.kill_reason is not None:  # killed before we knew whom to kill
            self._signal()

    @property
    def alive(self) -> bool:
        return not self._protocol.closed and not self.exit_status.done()

    async def call(self, header: dict[str, Any], payload: bytes) -> wire.Frame:
        """Send one invocation and wait for its answer; EnvironmentLost if the process ends."""
        if self._protocol.closed or self._transport is None:
            raise EnvironmentLost()
        waiter = self._loop.create_future()
        protocol = self._protocol
        protocol.waiter = waiter
        self._transport.write(wire.encode(header, payload))
        try:
            return await waiter
        finally:
            protocol.waiter = None

    # -- limits ---------------------------------------------------------------------------

    def check(self, now: float) -> None:
        """Kill the environment if its invocation is past the deadline or over memory."""
        if self.kill_reason is not None:
            return
        if now >= self.deadline:
            self.kill("timeout")
            return
        rss = self.rss()
        if rss > self.peak_rss:
            self.peak_rss = rss
        if rss > self._limit:
            self.kill("oom")

    def rss(self) -> int:
        if self._statm is None:
            return 0
        try:
            fields = os.pread(self._statm, 128, 0).split()
        except OSError:
            return 0
        return int(fields[1]) * PAGE if len(fields) > 1 else 0

    def kill(self, reason: str) -> None:
        if self.kill_reason is None:
            self.kill_reason = reason
        if self.pid is not None:
            self._signal()

    def _signal(self) -> None:
        # The template has not reaped it yet (no exit notice), so pid and group are still its.
        if self.pid is None or self.exit_status.done():
            return
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)

    # -- output ---------------------------------------------------------------------------

    def read_output(self, size: int | None = None) -> bytes:
        """The current invocation's output (its tail, past MAX_CAPTURE)."""
        try:
            if size is None:
                size = os.fstat(self.memfd).st_size
            if size <= 0:
                return b""
            start = max(0, size - MAX_CAPTURE)
            return os.pread(self.memfd, size - start, start)
        except OSError:
            return b""

    def exited(self, status: int | None) -> None:
        if not self.exit_status.done():
            self.exit_status.set_result(status)

    def close(self) -> None:
        """Kill the process group (if still running) and release the descriptors."""
        if self.kill_reason is None:
            self.kill_reason = "closed"
        self._signal()
        if self._transport is not None:
            self._transport.abort()
        if self._sock is not None:
            self._sock.close()
        for fd in (self.memfd, self._statm):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.memfd, self._statm = -1, None
