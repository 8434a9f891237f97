"""Per-invocation output capture inside an environment.

The environment's fds 1 and 2 point at one memfd that the supervisor also holds. Everything the
invocation writes — print, logging, C extensions, subprocesses — lands there in order; the
supervisor reads it after the answer (or after a kill, so a timed-out invocation keeps its
output). The environment empties it before each invocation.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

LAMBDA_LOG_FORMAT = "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s"


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current invocation's request id (Lambda's log format)."""

    def __init__(self) -> None:
        super().__init__()
        self.request_id = ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = self.request_id
        return True


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (environments replace it after the fork)."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def install_lambda_logging() -> RequestIdFilter:
    """Give the root logger Lambda's handler and format, as the AWS runtime does before it
    imports the function's module. Returns the filter whose request id we update."""
    handler = _StderrHandler()
    formatter = logging.Formatter(LAMBDA_LOG_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    stamp = RequestIdFilter()
    handler.addFilter(stamp)
    logging.getLogger().addHandler(handler)
    return stamp


def _text_stream(fd: int) -> TextIO:
    return open(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)


class OutputCapture:
    """Owns fds 1 and 2 of an environment process."""

    def __init__(self, memfd: int) -> None:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        os.dup2(memfd, 1)
        os.dup2(memfd, 2)
        os.close(memfd)
        # Fresh line-buffered streams keep print() and logging (stderr) in the order they
        # happened, whatever the template's streams were (even None).
        sys.stdout = _text_stream(1)
        sys.stderr = _text_stream(2)
        self._written = 0  # where the last finish() found the end of the output

    def reset(self) -> None:
        """Forget the previous invocation's output: no system call when it wrote nothing.
        Output written between invocations (a background thread) is kept for the next one."""
        if self._written:
            os.ftruncate(1, 0)
            os.lseek(1, 0, os.SEEK_SET)
            self._written = 0

    def finish(self) -> int:
        """Flush and return how many bytes this invocation wrote."""
        sys.stdout.flush()
        sys.stderr.flush()
        self._written = os.lseek(1, 0, os.SEEK_CUR)
        return self._written

    def write(self, text: str) -> None:
        sys.stderr.write(text)
