"""Lambda's platform log lines: START, END and REPORT, and the lines written on a failure."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from sluice.runtime.context import VERSION


def start_line(request_id: str) -> str:
    return f"START RequestId: {request_id} Version: {VERSION}\n"


def end_line(request_id: str) -> str:
    return f"END RequestId: {request_id}\n"


def billed_ms(duration_ms: float, init_ms: float | None) -> int:
    """Lambda bills each started millisecond, and (since August 2025) the init phase too."""
    billed = math.ceil(duration_ms if init_ms is None else duration_ms + init_ms)
    return billed if billed > 1 else 1


def report_line(
    request_id: str,
    duration_ms: float,
    billed: int,
    memory_mb: int,
    used_mb: int,
    init_ms: float | None,
) -> str:
    line = (
        f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
        f"Billed Duration: {billed} ms\tMemory Size: {memory_mb} MB\t"
        f"Max Memory Used: {used_mb} MB"
    )
    if init_ms is not None:
        line += f"\tInit Duration: {init_ms:.2f} ms"
    return line + "\t\n"


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def timed_out_line(request_id: str, timeout: float) -> str:
    return f"{timestamp()} {request_id} Task timed out after {timeout:.2f} seconds\n"


def runtime_error_lines(error_message: str, error_type: str) -> str:
    return f"{error_message}\n{error_type}\n"


class InvocationLog:
    """One invocation's log, kept as its parts: the text (START, output, END, REPORT) is only
    formatted when someone reads it, or when it is written to a log file."""

    __slots__ = ("billed", "duration_ms", "init_ms", "memory_mb", "output", "request_id", "used_mb")

    def __init__(
        self,
        request_id: str,
        output: bytes | str,
        duration_ms: float,
        billed: int,
        memory_mb: int,
        used_mb: int,
        init_ms: float | None,
    ) -> None:
        self.request_id = request_id
        self.output = output  # what the invocation wrote (bytes as captured, or decoded text)
        self.duration_ms = duration_ms
        self.billed = billed
        self.memory_mb = memory_mb
        self.used_mb = used_mb
        self.init_ms = init_ms

    def text(self) -> str:
        output = self.output
        if isinstance(output, bytes):
            output = output.decode("utf-8", "replace")
        rid = self.request_id
        return "".join(
            (
                start_line(rid),
                output,
                end_line(rid),
                report_line(
                    rid, self.duration_ms, self.billed, self.memory_mb, self.used_mb, self.init_ms
                ),
            )
        )
