"""Lambda's error objects, for handler exceptions and for environments that stopped."""

from __future__ import annotations

import os
import signal
import traceback
from types import TracebackType
from typing import Any

_HIDDEN_DIRS = (os.path.dirname(__file__), os.path.dirname(signal.__file__) + os.sep + "asyncio")


def handler_error(exc: BaseException, request_id: str) -> dict[str, Any]:
    """``{errorMessage, errorType, requestId, stackTrace}`` as the AWS Python runtime reports it;
    frames of the runtime itself (and asyncio's) are left out of the stack trace."""
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "requestId": request_id,
        "stackTrace": _user_frames(exc.__traceback__),
    }


def _user_frames(tb: TracebackType | None) -> list[str]:
    frames = [f for f in traceback.extract_tb(tb) if not f.filename.startswith(_HIDDEN_DIRS)]
    return traceback.format_list(frames)


def log_line(error: dict[str, Any]) -> str:
    """The ``[ERROR]`` line (and traceback) the runtime writes to the log on a failure."""
    trace = "".join(error.get("stackTrace") or ())
    text = f"[ERROR] {error['errorType']}: {error['errorMessage']}"
    if trace:
        text += "\nTraceback (most recent call last):\n" + trace
    return text if text.endswith("\n") else text + "\n"


def marshal_error(exc: BaseException, request_id: str) -> dict[str, Any]:
    return {
        "errorMessage": f"Unable to marshal response: {exc}",
        "errorType": "Runtime.MarshalError",
        "requestId": request_id,
        "stackTrace": [],
    }


def timeout_error(request_id: str, timeout: float) -> dict[str, Any]:
    message = f"Task timed out after {timeout:.2f} seconds"
    return {
        "errorMessage": f"RequestId: {request_id} Error: {message}",
        "errorType": "Sandbox.Timedout",
    }


def exit_description(wait_status: int | None) -> str:
    """Go's os/exec wording, which Lambda's messages use: 'exit status 3', 'signal: killed'."""
    if wait_status is None:
        return "Runtime exited without providing a reason"
    code = os.waitstatus_to_exitcode(wait_status)
    if code >= 0:
        return f"Runtime exited with error: exit status {code}"
    name = signal.strsignal(-code) or f"signal {-code}"
    return f"Runtime exited with error: signal: {name[:1].lower()}{name[1:]}"


def exit_error(request_id: str, wait_status: int | None) -> dict[str, Any]:
    return {
        "errorMessage": f"RequestId: {request_id} Error: {exit_description(wait_status)}",
        "errorType": "Runtime.ExitError",
    }


def out_of_memory_error(request_id: str) -> dict[str, Any]:
    return {
        "errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: signal: killed",
        "errorType": "Runtime.OutOfMemory",
    }
