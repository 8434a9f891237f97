"""HTTP-level errors the gateway answers with, on top of `sluice.errors`."""

from __future__ import annotations

from sluice.errors import NotFound, SluiceError, ValidationError


class BadRequest(ValidationError):
    """Malformed HTTP (including request-smuggling forms): answered, then the connection closes."""

    code = "BadRequest"


class RequestTimeout(SluiceError):
    code = "RequestTimeout"
    status = 408


class UriTooLong(SluiceError):
    code = "UriTooLong"
    status = 414


class HeadersTooLarge(SluiceError):
    code = "RequestHeaderFieldsTooLarge"
    status = 431


class RouteNotFound(NotFound):
    code = "NotFound"


class FunctionFailed(SluiceError):
    """The function raised, or returned something that is not a valid proxy response."""

    code = "FunctionError"
    status = 502


class BadGateway(SluiceError):
    """A reverse-proxy upstream could not be reached or answered malformed HTTP."""

    code = "BadGateway"
    status = 502


class IntegrationTimeout(SluiceError):
    code = "IntegrationTimeout"
    status = 504


class ExpectationFailed(SluiceError):
    code = "ExpectationFailed"
    status = 417
