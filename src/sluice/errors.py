"""Errors with a stable code, an HTTP status and a message that names the problem.

Every layer raises these; the gateway and the CLI turn them into a JSON body or an exit code,
so a client always learns *what* was wrong, never just that something was.
"""

from __future__ import annotations


class SluiceError(Exception):
    """Base class: `code` is machine-readable (AWS-style), `status` the HTTP status to answer."""

    code = "InternalError"
    status = 500

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


class ValidationError(SluiceError):
    """A request or a configuration value is outside what is allowed."""

    code = "ValidationError"
    status = 400


class NotFound(SluiceError):
    code = "ResourceNotFound"
    status = 404


class QueueDoesNotExist(NotFound):
    code = "QueueDoesNotExist"


class FunctionNotFound(NotFound):
    code = "FunctionNotFound"


class MessageTooLarge(ValidationError):
    code = "MessageTooLarge"
    status = 413


class PayloadTooLarge(ValidationError):
    code = "RequestEntityTooLarge"
    status = 413


class InvalidPayload(ValidationError):
    code = "InvalidRequestContent"


class ReceiptHandleIsInvalid(ValidationError):
    code = "ReceiptHandleIsInvalid"


class Throttled(SluiceError):
    """A concurrency limit or a backlog limit is reached; try again later."""

    code = "TooManyRequestsException"
    status = 429


class QueueFull(SluiceError):
    code = "QueueOverLimit"
    status = 429


class Unavailable(SluiceError):
    """A backend (broker, state) cannot be reached. For a send or a gateway request this means
    it was not acknowledged; the message says when a write's outcome is unknown."""

    code = "ServiceUnavailable"
    status = 503


def error_for(code: str, message: str) -> SluiceError:
    """The error that `SluiceError.to_dict` gave ``code`` and ``message`` (read back from another
    process); a plain `SluiceError` for a code this version does not know."""
    found: type[SluiceError] = SluiceError
    pending: list[type[SluiceError]] = [SluiceError]
    while pending:  # breadth first: a subclass that keeps its parent's code is not chosen
        cls = pending.pop(0)
        if cls.code == code:
            found = cls
            break
        pending.extend(cls.__subclasses__())
    error = found(message)
    if found is SluiceError and code != SluiceError.code:
        error.code = code
    return error
