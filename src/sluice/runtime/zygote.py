"""The supervisor's side of the template process: start it, ask it to fork, hear of exits."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from sluice.runtime import wire
from sluice.runtime.environment import EnvironmentConfig
from sluice.runtime.loader import AppLoadError


class TemplateLost(Exception):
    """The template process is gone; a new one must be started."""


class TemplateProcess:
    def __init__(
        self,
        app_ref: str,
        on_exit: Callable[[int, int], None],
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self._app_ref = app_ref
        self._on_exit = on_exit  # (pid, raw wait status) of each environment that ended
        self._on_lost = on_lost  # the template is gone: no more exit notices will come
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._frames = wire.FrameBuffer()
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._forks: dict[int, asyncio.Future[int | None]] = {}
        self._seq = itertools.count()
        self.functions: frozenset[str] = frozenset()
        self.pid: int | None = None

    @property
    def running(self) -> bool:
        return self._sock is not None

    async def start(self, timeout: float = 120.0) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sluice.runtime.template",
                self._app_ref,
                str(theirs.fileno()),
                str(os.getpid()),
                pass_fds=[theirs.fileno()],
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._ready = loop.create_future()
        loop.add_reader(ours, self._on_readable)
        try:
            hello = await asyncio.wait_for(self._ready, timeout)
        except (TemplateLost, TimeoutError) as exc:
            await self.close()
            raise AppLoadError(f"the runtime template for {self._app_ref!r} did not start") from exc
        if hello.get("op") == "failed":
            await self.close()
            raise AppLoadError(str(hello.get("message")))
        self.pid = int(hello["pid"])
        self.functions = frozenset(hello.get("functions") or ())

    async def fork(self, config: EnvironmentConfig, fds: list[int]) -> int | None:
        """Ask for an environment, handing it ``fds`` (its ends of the invocation pipes and its
        output memfd); its pid, or None if the app has no such handler."""
        if self._sock is None:
            raise TemplateLost()
        seq = next(self._seq)
        waiter = asyncio.get_running_loop().create_future()
        self._forks[seq] = waiter
        frame = wire.encode({"op": "fork", "seq": seq, "config": config.to_header()})
        try:
            await self._send(frame, fds)
        except BaseException:
            self._forks.pop(seq, None)
            raise
        return await waiter

    async def _send(self, data: bytes, fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._sock is None:
                raise TemplateLost()
            try:
                wire.send_with_fds(self._sock, data, fds)
                return
            except BlockingIOError:
                writable = loop.create_future()
                loop.add_writer(self._sock, writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(self._sock)
            except OSError as exc:
                self._lost()
                raise TemplateLost() from exc

    def _on_readable(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        for header, _ in self._frames.feed(data):
            op = header.get("op")
            if op == "forked":
                waiter = self._forks.pop(header["seq"], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(header["pid"])
            elif op == "exited":
                self._on_exit(header["pid"], header["status"])
            elif op in ("ready", "failed") and self._ready and not self._ready.done():
                self._ready.set_result(header)

    def _lost(self) -> None:
        if self._sock is None:
            return
        asyncio.get_running_loop().remove_reader(self._sock)
        self._sock.close()
        self._sock = None
        for waiter in [*self._forks.values(), self._ready]:
            if waiter is not None and not waiter.done():
                waiter.set_exception(TemplateLost())
        self._forks.clear()
        self._on_lost()

    async def close(self, grace: float = 5.0) -> None:
        """Stop the template; it kills and reaps every environment it forked."""
        self._lost()  # closing the control socket is the stop signal
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
