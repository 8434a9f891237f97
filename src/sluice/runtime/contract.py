"""What the rest of Sluice needs from the runtime: invoke a function synchronously."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable


class LogText(Protocol):
    """Log text built only when it is read (most invocations' logs never are)."""

    def text(self) -> str: ...


LOG_TAIL = 64 * 1024  # characters of log text kept in InvocationResult.logs, as Lambda's Tail


class InvocationResult:
    """What one invocation gave. Immutable (read-only properties over private slots: plain
    slot stores keep building one cheap on the warm path); ``logs`` is built from its parts on
    first read."""

    __slots__ = (
        "_billed_duration_ms",
        "_cold",
        "_duration_ms",
        "_function_error",
        "_init_duration_ms",
        "_logs",
        "_max_memory_mb",
        "_payload",
        "_request_id",
    )

    def __init__(
        self,
        request_id: str,
        payload: bytes,
        function_error: str | None = None,
        logs: str | LogText = "",
        duration_ms: float = 0.0,
        billed_duration_ms: int = 0,
        max_memory_mb: int = 0,
        init_duration_ms: float | None = None,
        cold: bool = False,
    ) -> None:
        self._request_id = request_id
        self._payload = payload
        self._function_error = function_error
        self._logs: str | LogText = logs
        self._duration_ms = duration_ms
        self._billed_duration_ms = billed_duration_ms
        self._max_memory_mb = max_memory_mb
        self._init_duration_ms = init_duration_ms
        self._cold = cold

    @property
    def request_id(self) -> str:
        return self._request_id

    @property
    def payload(self) -> bytes:
        """JSON: the handler's return value, or Lambda's error object."""
        return self._payload

    @property
    def function_error(self) -> str | None:
        """'Unhandled' (the X-Amz-Function-Error header) when the handler failed."""
        return self._function_error

    @property
    def duration_ms(self) -> float:
        return self._duration_ms

    @property
    def billed_duration_ms(self) -> int:
        return self._billed_duration_ms

    @property
    def max_memory_mb(self) -> int:
        return self._max_memory_mb

    @property
    def init_duration_ms(self) -> float | None:
        """Set on a cold start."""
        return self._init_duration_ms

    @property
    def cold(self) -> bool:
        return self._cold

    @property
    def logs(self) -> str:
        """START/END/REPORT and everything the invocation printed or logged (the last 64 KiB)."""
        logs = self._logs
        if not isinstance(logs, str):
            logs = self._logs = logs.text()[-LOG_TAIL:]
        return logs

    @property
    def ok(self) -> bool:
        return self.function_error is None

    def error(self) -> dict[str, Any] | None:
        """Lambda's error object ({errorMessage, errorType, stackTrace}) when the handler failed."""
        if self.function_error is None:
            return None
        import orjson

        parsed = orjson.loads(self.payload)
        return parsed if isinstance(parsed, dict) else {"errorMessage": str(parsed)}

    def __repr__(self) -> str:
        return (
            f"InvocationResult(request_id={self.request_id!r}, payload={self.payload[:200]!r}, "
            f"function_error={self.function_error!r}, duration_ms={self.duration_ms!r}, "
            f"cold={self.cold!r})"
        )


class Invoker(Protocol):
    async def invoke(
        self,
        function: str,
        payload: bytes,
        *,
        request_id: str | None = None,
        client_context: Mapping[str, Any] | None = None,
        identity: Mapping[str, Any] | None = None,
    ) -> InvocationResult:
        """Run the function once on a warm or new environment and return its result.

        Raises `sluice.errors.FunctionNotFound` for an unknown function and
        `sluice.errors.Throttled` when the function is at its reserved concurrency."""
        ...


@runtime_checkable
class InvokesSoon(Protocol):
    """An invoker that can start an invocation without a coroutine per call (the gateway's sync
    routes use it when the invoker offers it)."""

    def invoke_then(
        self,
        function: str,
        payload: bytes,
        done: Callable[[InvocationResult | BaseException], None],
        *,
        request_id: str | None = None,
    ) -> None:
        """`Invoker.invoke`, its result or the exception it raises passed to ``done`` on the
        event loop, never before this returns. Whoever stops waiting for ``done`` abandons the
        result; the invocation itself runs to its end."""
        ...
