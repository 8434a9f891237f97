"""What the rest of Sluice needs from the runtime: invoke a function synchronously."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class LogText(Protocol):
    """Log text built only when it is read (most invocations' logs never are)."""

    def text(self) -> str: ...


LOG_TAIL = 64 * 1024  # characters of log text kept in InvocationResult.logs, as Lambda's Tail


class InvocationResult:
    """What one invocation gave. Immutable; ``logs`` is built from its parts on first read."""

    __slots__ = (
        "_logs",
        "billed_duration_ms",
        "cold",
        "duration_ms",
        "function_error",
        "init_duration_ms",
        "max_memory_mb",
        "payload",
        "request_id",
    )

    _logs: str | LogText
    request_id: str
    payload: bytes  # JSON: the handler's return value, or Lambda's error object
    function_error: str | None  # "Unhandled" (X-Amz-Function-Error) when the handler failed
    duration_ms: float
    billed_duration_ms: int
    max_memory_mb: int
    init_duration_ms: float | None  # set on a cold start
    cold: bool

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
        put = object.__setattr__
        put(self, "request_id", request_id)
        put(self, "payload", payload)
        put(self, "function_error", function_error)
        put(self, "_logs", logs)
        put(self, "duration_ms", duration_ms)
        put(self, "billed_duration_ms", billed_duration_ms)
        put(self, "max_memory_mb", max_memory_mb)
        put(self, "init_duration_ms", init_duration_ms)
        put(self, "cold", cold)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"InvocationResult is immutable (cannot set {name!r})")

    @property
    def logs(self) -> str:
        """START/END/REPORT and everything the invocation printed or logged (the last 64 KiB)."""
        logs = self._logs
        if not isinstance(logs, str):
            logs = logs.text()[-LOG_TAIL:]
            object.__setattr__(self, "_logs", logs)
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
