"""Settling a future whose caller may have given up on it."""

from __future__ import annotations

import asyncio
from typing import Any


def settle(future: asyncio.Future[Any], error: BaseException | None, value: Any = None) -> None:
    """Give ``future`` its exception (``error``) or else its result (``value``), unless it is
    done already (abandoned or cancelled by its caller: the outcome then goes nowhere)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
