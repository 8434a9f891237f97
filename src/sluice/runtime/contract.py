"""What the rest of Sluice needs from the runtime: invoke a function synchronously."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class InvocationResult:
    request_id: str
    payload: bytes  # JSON: the handler's return value, or Lambda's error object
    function_error: str | None = None  # "Unhandled" (X-Amz-Function-Error) when the handler failed
    logs: str = ""  # START/END/REPORT and everything the invocation printed or logged
    duration_ms: float = 0.0
    billed_duration_ms: int = 0
    max_memory_mb: int = 0
    init_duration_ms: float | None = None  # set on a cold start
    cold: bool = False

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
