"""The supervisor's handle on one execution environment: its pipes, pid, output and limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from functools import partial

from sluice.futures import settle_with
from sluice.runtime import channel
from sluice.runtime.environment import EnvironmentConfig

PAGE = os.sysconf("SC_PAGE_SIZE")
MAX_CAPTURE = 16 << 20  # at most this much of one invocation's output is kept (the tail)

log = logging.getLogger("sluice.runtime")


class EnvironmentLost(Exception):
    """The environment's answer pipe closed: its process ended (or was killed) mid-invocation."""


# Told an invocation's answer, or `EnvironmentLost` when the environment ended first.
OnAnswer = Callable[["channel.Answer | EnvironmentLost"], None]


class _Answers(asyncio.Protocol):
    """The answer pipe's protocol: hands each answer to the invocation waiting for it."""

    __slots__ = ("_on_closed", "_on_corrupt", "_parser", "closed", "on_answer")

    def __init__(
        self, on_closed: Callable[[], None], on_corrupt: Callable[[channel.ChannelError], None]
    ) -> None:
        self._parser = channel.AnswerParser()
        self._on_closed = on_closed
        self._on_corrupt = on_corrupt
        self.on_answer: OnAnswer | None = None
        self.closed = False

    def data_received(self, data: bytes) -> None:
        try:
            answers = self._parser.feed(data)
        except channel.ChannelError as error:
            self._on_corrupt(error)
            return
        for answer in answers:
            self._tell(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_closed()
        self._tell(EnvironmentLost())

    def _tell(self, outcome: channel.Answer | EnvironmentLost) -> None:
        on_answer, self.on_answer = self.on_answer, None
        if on_answer is not None:
            on_answer(outcome)


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
        self.kill_reason: str | None = None  # "timeout" | "oom" | "corrupt" | "closed"
        self.peak_rss = 0
        self.alive = True  # until its process exits or its answer pipe closes
        self._loop = asyncio.get_running_loop()
        self.exit_status: asyncio.Future[int | None] = self._loop.create_future()
        self._limit = config.memory << 20
        self._statm: int | None = None
        self._requests: asyncio.WriteTransport | None = None
        self._answer_pipe: asyncio.ReadTransport | None = None
        self._answers = _Answers(self._answer_pipe_closed, self._answer_pipe_corrupt)

    async def connect(self, requests: int, answers: int) -> None:
        """Take over our ends of the invocation pipes (the write end of the requests', the
        read end of the answers'); the transports own and close them."""
        loop = self._loop
        pipe = open(answers, "rb", buffering=0)  # noqa: SIM115 - the transport closes it
        self._answer_pipe, _ = await loop.connect_read_pipe(lambda: self._answers, pipe)
        pipe = open(requests, "wb", buffering=0)  # noqa: SIM115 - the transport closes it
        self._requests, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, pipe)

    def forked(self, pid: int) -> None:
        self.pid = pid
        with contextlib.suppress(OSError):
            self._statm = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
        if self.kill_reason is not None:  # killed before we knew whom to kill
            self._signal()

    def _answer_pipe_closed(self) -> None:
        self.alive = False

    def _answer_pipe_corrupt(self, error: channel.ChannelError) -> None:
        # Bytes that are not an answer (say, a handler wrote to a stray descriptor): nothing more
        # from this environment can be trusted. Killing it closes the pipe, which fails the
        # waiting invocation with EnvironmentLost at once instead of at its timeout.
        log.warning(
            "environment %s of %s sent a malformed answer: %s", self.pid, self.function, error
        )
        self.kill("corrupt")

    def send(self, request: bytes) -> asyncio.Future[channel.Answer]:
        """Send one encoded request; the future is its answer, or fails with EnvironmentLost
        if the process ends first."""
        waiter: asyncio.Future[channel.Answer] = self._loop.create_future()
        self.send_then(request, partial(settle_with, waiter))
        return waiter

    def send_then(self, request: bytes, on_answer: OnAnswer) -> None:
        """Send one encoded request; ``on_answer`` gets its answer as soon as it is read (no
        future, no coroutine: the warm path), or `EnvironmentLost`. Raises EnvironmentLost at
        once if the process has ended."""
        answers = self._answers
        if answers.closed or self._requests is None:
            raise EnvironmentLost()
        answers.on_answer = on_answer
        self._requests.write(request)

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
        self.alive = False
        if not self.exit_status.done():
            self.exit_status.set_result(status)

    def close(self) -> None:
        """Kill the process group (if still running) and release the descriptors."""
        if self.kill_reason is None:
            self.kill_reason = "closed"
        self._signal()
        # Either may have closed itself when the process ended (and asyncio's pipe transports
        # fail if closed twice).
        if self._requests is not None and not self._requests.is_closing():
            self._requests.abort()
        if self._answer_pipe is not None and not self._answer_pipe.is_closing():
            self._answer_pipe.close()
        for fd in (self.memfd, self._statm):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.memfd, self._statm = -1, None
