"""The loop inside one execution environment (a process forked from the template).

One invocation at a time: read a request from the invocation channel (`channel`), build the
context, run the handler, answer with the serialised result or Lambda's error object. The
handler's module was imported by the template before the fork, so nothing here imports user code.
"""

from __future__ import annotations

import asyncio
import decimal
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sluice.runtime import channel, faults
from sluice.runtime.capture import OutputCapture, RequestIdFilter
from sluice.runtime.context import ContextFactory, function_arn

_DUMP_OPTIONS = orjson.OPT_NON_STR_KEYS
perf_counter = time.perf_counter


def _peak_rss_kb() -> int:
    """The environment's peak RSS (Max Memory Used). RUSAGE_THREAD, called from the thread that
    serves invocations, gives the process's own ru_maxrss (the peak is the address space's, not
    the thread's) at half the cost of RUSAGE_SELF, which also sums the CPU time of every thread."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_maxrss


def _default(value: Any) -> Any:
    # The AWS runtime serialises Decimal (what DynamoDB returns) as a number; so do we.
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


@dataclass(frozen=True, slots=True)
class EnvironmentConfig:
    """What the supervisor tells the template about the environment it wants."""

    function: str
    memory: int
    timeout: float
    environment: Mapping[str, str]
    log_stream: str
    requested_at: float  # time.monotonic() when the supervisor asked for this environment
    provisioned: bool = False

    def to_header(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "memory": self.memory,
            "timeout": self.timeout,
            "environment": dict(self.environment),
            "log_stream": self.log_stream,
            "requested_at": self.requested_at,
            "provisioned": self.provisioned,
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> EnvironmentConfig:
        return cls(
            function=header["function"],
            memory=int(header["memory"]),
            timeout=float(header["timeout"]),
            environment=dict(header["environment"]),
            log_stream=header["log_stream"],
            requested_at=float(header["requested_at"]),
            provisioned=bool(header.get("provisioned", False)),
        )


class Environment:
    def __init__(
        self,
        requests: int,
        answers: int,
        config: EnvironmentConfig,
        handler: Callable[[Any, Any], Any],
        capture: OutputCapture,
        stamp: RequestIdFilter,
    ) -> None:
        self._reader = channel.RequestReader(requests)
        self._answers = answers
        self._config = config
        self._handler = handler
        self._capture = capture
        self._stamp = stamp
        self._loop: asyncio.AbstractEventLoop | None = None  # made on the first async handler
        self._contexts = ContextFactory(
            function_name=config.function,
            memory_limit_in_mb=str(config.memory),
            log_stream_name=config.log_stream,
            invoked_function_arn=function_arn(config.function),
        )

    def serve(self) -> None:
        """Answer invocations until the supervisor closes the request pipe."""
        init_ms: float | None = None
        if not self._config.provisioned:
            init_ms = (time.monotonic() - self._config.requested_at) * 1000.0
        read, answers = self._reader.read, self._answers
        while (request := read()) is not None:
            channel.write_all(answers, self._invoke(request, init_ms))
            init_ms = None

    def _invoke(self, request: channel.Request, init_ms: float | None) -> bytes:
        """The encoded answer to one request."""
        request_id, deadline, extra, payload = request
        try:
            event = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError as exc:
            reason = f"Could not parse request body: {exc}".encode()
            return channel.encode_answer(channel.INVALID, 0.0, init_ms, 0, 0, reason)
        if extra is None:
            context = self._contexts.new(request_id, deadline)
        else:
            context = self._contexts.new(
                request_id, deadline, extra.get("client_context"), extra.get("identity")
            )
        capture = self._capture
        capture.reset()
        self._stamp.request_id = request_id
        status = channel.OK
        started = perf_counter()
        try:
            result = self._handler(event, context)
            if hasattr(result, "__await__"):
                result = self._event_loop().run_until_complete(result)
        except Exception as exc:
            status, error = channel.ERROR, faults.handler_error(exc, request_id)
        else:
            try:
                body = orjson.dumps(result, default=_default, option=_DUMP_OPTIONS)
            except TypeError as exc:
                status, error = channel.ERROR, faults.marshal_error(exc, request_id)
        elapsed_ms = (perf_counter() - started) * 1000.0
        if status == channel.ERROR:
            capture.write(faults.log_line(error))
            body = orjson.dumps(error)
        written = capture.finish()
        return channel.encode_answer(status, elapsed_ms, init_ms, written, _peak_rss_kb(), body)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        # One loop per environment, reused, so connections a handler caches stay usable.
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop
