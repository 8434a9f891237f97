"""Per-function log files, written behind the invocations.

An invocation hands its log (text, or an `InvocationLog` still in parts) to `LogFiles.add` and
returns; the text is formatted and written a moment later, many invocations per write, as
Lambda's logs reach CloudWatch after the invocation, not during it. `flush` writes everything
now; `close` flushes and closes the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TextIO

from sluice.runtime.contract import LogText

log = logging.getLogger("sluice.runtime")

FLUSH_DELAY = 0.05  # seconds a log may wait before it is on disk


class LogFiles:
    def __init__(self, directory: Path, *, delay: float = FLUSH_DELAY) -> None:
        self._dir = directory
        self._delay = delay
        self._files: dict[str, TextIO] = {}
        self._pending: dict[str, list[str | LogText]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, function: str, entry: str | LogText) -> None:
        pending = self._pending.get(function)
        if pending is None:
            pending = self._pending[function] = []
        pending.append(entry)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self.flush)

    def flush(self) -> None:
        """Write every pending log to its function's file."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        for function, entries in pending.items():
            text = "".join(e if isinstance(e, str) else e.text() for e in entries)
            try:
                file = self._open(function)
                file.write(text)
                file.flush()
            except OSError:  # a full or vanished disk must not fail invocations
                log.exception("could not write the log of function %r", function)

    def _open(self, function: str) -> TextIO:
        file = self._files.get(function)
        if file is None:
            self._dir.mkdir(parents=True, exist_ok=True)
            file = self._files[function] = open(  # noqa: SIM115 - kept open, closed in close()
                self._dir / f"{function}.log", "a", encoding="utf-8"
            )
        return file

    def close(self) -> None:
        self.flush()
        for file in self._files.values():
            with contextlib.suppress(OSError):
                file.close()
        self._files.clear()
