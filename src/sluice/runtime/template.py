"""The template ("zygote") process: imports the app once, then forks environments on request.

Run as ``python -m sluice.runtime.template APP_REF CONTROL_FD SUPERVISOR_PID``. Over the control
socket the supervisor sends ``fork`` frames, each with three descriptors attached (the
environment's ends of its two invocation pipes, and the memfd its output goes to); the template
forks and answers ``forked`` with the pid. It reaps its children and reports each one's end as
``exited`` with the raw wait status. It is also the subreaper of everything the environments
spawn, so nothing a handler leaves behind becomes a zombie. Closing the control socket stops it,
and its environments with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
import selectors
import signal
import socket
import sys
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from sluice.runtime import wire
from sluice.runtime.capture import OutputCapture, RequestIdFilter, install_lambda_logging
from sluice.runtime.context import lambda_environment
from sluice.runtime.environment import Environment, EnvironmentConfig

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
FDS_PER_FORK = 3  # the request pipe's read end, the answer pipe's write end, the memfd


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def data_limit_bytes(memory_mb: int) -> int:
    """RLIMIT_DATA backstop. The supervisor's RSS watch enforces the real limit; this one only
    stops an allocation too fast for it to see, so it is deliberately generous."""
    return (2 * memory_mb + 256) << 20


class Template:
    def __init__(self, control: socket.socket, handlers: dict[str, Callable[..., Any]]) -> None:
        self._control = control
        self._handlers = handlers
        self._stamp: RequestIdFilter | None = None
        self._children: set[int] = set()
        self._pending_fds: deque[int] = deque()
        self._frames = wire.FrameBuffer()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()

    def serve(self, stamp: RequestIdFilter) -> None:
        self._stamp = stamp
        self._wake_w.setblocking(False)
        self._wake_r.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
        self._selector.register(self._control, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while self._step():
                pass
        finally:
            self._stop_children()

    def _step(self) -> bool:
        for key, _ in self._selector.select():
            if key.fileobj is self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    while self._wake_r.recv(4096):
                        pass
                self._reap()
                continue
            try:
                data, fds = wire.recv_with_fds(self._control, maxfds=4 * FDS_PER_FORK)
            except OSError:  # the supervisor went away
                return False
            self._pending_fds.extend(fds)
            if not data:
                return False
            for header, _body in self._frames.feed(data):
                if header.get("op") == "fork":
                    self._fork(header)
                elif header.get("op") == "stop":
                    return False
        return True

    def _fork(self, request: dict[str, Any]) -> None:
        fds = [self._pending_fds.popleft() for _ in range(FDS_PER_FORK)]
        config = EnvironmentConfig.from_header(request["config"])
        handler = self._handlers.get(config.function)
        if handler is None:
            _close_all(fds)
            wire.write(self._control, {"op": "forked", "seq": request["seq"], "pid": None})
            return
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = self._child(fds, config, handler)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(BaseException):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        _close_all(fds)
        self._children.add(pid)
        wire.write(self._control, {"op": "forked", "seq": request["seq"], "pid": pid})

    def _child(self, fds: list[int], config: EnvironmentConfig, handler: Callable[..., Any]) -> int:
        requests, answers, memfd = fds
        # Its own process group, so a kill takes everything the handler spawned; not its own
        # session (setsid): Linux gives each session its own scheduling autogroup, and a wakeup
        # across groups makes a pipe round trip 1.12x slower (benchmarks/ipc_bench.py).
        os.setpgid(0, 0)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self._selector.close()
        for fd in self._pending_fds:  # descriptors meant for environments forked after us
            os.close(fd)
        for sock in (self._control, self._wake_r, self._wake_w):
            sock.close()
        limit = data_limit_bytes(config.memory)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        handler_name = f"{handler.__module__}.{handler.__qualname__}"
        os.environ.update(
            lambda_environment(
                config.function, config.memory, handler_name, config.log_stream, config.environment
            )
        )
        for fd in (requests, answers):  # what a handler spawns must not hold the channel open
            os.set_inheritable(fd, False)
        capture = OutputCapture(memfd)
        assert self._stamp is not None
        Environment(requests, answers, config, handler, capture, self._stamp).serve()
        return 0

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self._children:
                self._children.discard(pid)
                with contextlib.suppress(OSError):
                    wire.write(self._control, {"op": "exited", "pid": pid, "status": status})

    def _stop_children(self) -> None:
        for pid in self._children:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in self._children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._children.clear()
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def main(argv: list[str]) -> int:
    from sluice.runtime.loader import load_app

    app_ref, control_fd, supervisor = argv[0], int(argv[1]), int(argv[2])
    control = socket.socket(fileno=control_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:  # it died before we asked to follow it
        return 1
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    # Lambda's logging is in place before user code is imported (its basicConfig is a no-op).
    stamp = install_lambda_logging()
    try:
        app, _source = load_app(app_ref)
    except Exception as exc:
        wire.write(control, {"op": "failed", "message": str(exc), "type": type(exc).__name__})
        return 1
    handlers = {n: f.handler for n, f in app.functions.items() if f.handler is not None}
    # Everything imported so far is shared with every environment; freezing it keeps the
    # children's garbage collector from writing to (and so copying) those pages.
    gc.collect()
    gc.freeze()
    wire.write(control, {"op": "ready", "pid": os.getpid(), "functions": sorted(handlers)})
    Template(control, handlers).serve(stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
