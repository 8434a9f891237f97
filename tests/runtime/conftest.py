from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from sluice.runtime.loader import load_app
from sluice.runtime.pool import Runtime

APPS = Path(__file__).parent / "apps"


def descendants() -> set[int]:
    """Live (non-zombie) processes below this one."""
    live = set()
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                live.add(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return live


@pytest.fixture
def run() -> Iterator[object]:
    """Run a coroutine on a fresh event loop (the suite has no asyncio plugin)."""
    loop = asyncio.new_event_loop()
    try:
        yield loop.run_until_complete
    finally:
        loop.close()


@contextlib.asynccontextmanager
async def running(app_file: str, **kwargs: object) -> AsyncIterator[Runtime]:
    """`started`, closed at the end of the block whatever happens in it."""
    runtime = await started(app_file, **kwargs)
    try:
        yield runtime
    finally:
        await runtime.close()


async def started(app_file: str, tmp_path: Path | None = None, **kwargs: object) -> Runtime:
    app, source = load_app(str(APPS / app_file))
    runtime = Runtime(source.ref, app.functions, log_dir=tmp_path, **kwargs)  # type: ignore[arg-type]
    await runtime.start()
    return runtime
