"""Settling a future whose caller may have given up on it, and reading a done one's outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sluice.errors import Unavailable


def settle(future: asyncio.Future[Any], error: BaseException | None, value: Any = None) -> None:
    """Give ``future`` its exception (``error``) or else its result (``value``), unless it is
    done already (abandoned or cancelled by its caller: the outcome then goes nowhere)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def settle_with(future: asyncio.Future[Any], result: Any) -> None:
    """`settle` with an outcome that is either the value or the exception that replaced it."""
    if isinstance(result, BaseException):
        settle(future, result)
    else:
        settle(future, None, result)


def outcome(future: asyncio.Future[Any], cancelled: str) -> tuple[BaseException | None, Any]:
    """A done future's exception (and None), or None and its result; a cancelled future's is
    `Unavailable` with the message ``cancelled``."""
    if future.cancelled():
        return Unavailable(cancelled), None
    error = future.exception()
    return error, None if error is not None else future.result()


def pass_outcome(done: Callable[[Any], None], cancelled: str, future: asyncio.Future[Any]) -> None:
    """Call ``done`` with a done future's result, or with its exception (`outcome`'s), e.g. as
    the future's done callback through ``partial(pass_outcome, done, cancelled)``."""
    error, result = outcome(future, cancelled)
    done(result if error is None else error)
