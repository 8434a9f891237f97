"""The one polling loop behind every event source: an SQS mapping, async invocations, and (later)
topic subscriptions and workflow steps all drain a queue through a `Poller`.

A poller keeps up to ``max_concurrency`` batches in flight. Each batch runs under a lease from the
`Limiter` on ``lease_key``, so the cap holds across every process (and host) sharing that limiter,
and a batch whose holder dies frees its slot when the lease expires. On failures the poller halves
its concurrency and grows it back by one per successful batch (Lambda backs off the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from sluice.broker.contract import Broker, Message
from sluice.limits.contract import Limiter

log = logging.getLogger("sluice.dispatch")

# Handles one batch; returns True when the batch succeeded (drives the adaptive concurrency).
BatchHandler = Callable[[Sequence[Message]], Awaitable[bool]]

MAX_BATCH_BYTES = 6 * 1024 * 1024  # a synchronous invoke payload is at most 6 MB, as in Lambda
LONG_POLL = 1.0  # seconds a worker waits for the first message of a batch before re-checking


@dataclass(frozen=True, slots=True)
class PollerConfig:
    name: str
    queue: str
    batch_size: int
    batching_window: float
    max_concurrency: int
    lease_key: str
    # A held lease is renewed every third of this while its batch runs, so a SIGKILLed
    # holder's slot frees within this many seconds, however long its batch would have taken.
    lease_ttl: float = 6.0
    visibility_timeout: float | None = None


class Poller:
    def __init__(
        self, config: PollerConfig, broker: Broker, limiter: Limiter, handle: BatchHandler
    ):
        self.config = config
        self._broker = broker
        self._limiter = limiter
        self._handle = handle
        self._target = config.max_concurrency
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        # Leases whose release failed (the limiter's backend was down): released again before the
        # next acquire, so an outage does not hold their slots until the leases expire.
        self._unreleased: list[str] = []
        self.in_flight = 0
        self.batches = 0
        self.failures = 0

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    @property
    def target_concurrency(self) -> int:
        return self._target

    def start(self) -> None:
        self._stopping.clear()
        self._tasks = [
            asyncio.create_task(self._worker(i), name=f"poller:{self.config.name}:{i}")
            for i in range(self.config.max_concurrency)
        ]

    async def stop(self, grace: float = 30.0) -> None:
        """Stop taking new batches; let batches in flight finish (up to ``grace`` seconds)."""
        self._stopping.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._tasks = []

    async def _worker(self, index: int) -> None:
        cfg = self.config
        error_backoff = 0.05
        while not self._stopping.is_set():
            if index >= self._target:
                await self._sleep(0.2)
                continue
            try:
                while self._unreleased:
                    await self._limiter.release(cfg.lease_key, self._unreleased[-1])
                    self._unreleased.pop()
                token = await self._limiter.acquire(
                    cfg.lease_key, cfg.max_concurrency, cfg.lease_ttl
                )
                if token is None:
                    await self._sleep(0.02)
                    continue
                try:
                    await self._holding(token, self._one_batch())
                finally:
                    try:
                        await self._limiter.release(cfg.lease_key, token)
                    except Exception:
                        self._unreleased.append(token)
                        raise
                error_backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception:
                # A backend that is down must not kill the poller: log, back off, try again.
                log.exception("poller %s: batch failed; retrying in %.2fs", cfg.name, error_backoff)
                await self._sleep(error_backoff)
                error_backoff = min(error_backoff * 2, 5.0)

    async def _one_batch(self) -> None:
        batch = await self._collect()
        if batch:
            self.in_flight += 1
            try:
                ok = await self._handle(batch)
            finally:
                self.in_flight -= 1
            self._record(ok)

    async def _holding(self, token: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` while renewing the lease ``token``."""
        cfg = self.config
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=cfg.lease_ttl / 3)
                if done:
                    return task.result()
                try:
                    if not await self._limiter.renew(cfg.lease_key, token, cfg.lease_ttl):
                        log.warning("poller %s: a lease expired while its batch ran", cfg.name)
                except Exception:
                    log.exception("poller %s: renewing a lease failed", cfg.name)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _collect(self) -> list[Message]:
        """One batch: as soon as messages arrive, or - with a batching window - until the batch is
        full, the window has passed, or the payload would exceed 6 MB."""
        cfg = self.config
        batch = await self._broker.receive(
            cfg.queue, cfg.batch_size, wait=LONG_POLL, visibility_timeout=cfg.visibility_timeout
        )
        if not batch or cfg.batching_window <= 0:
            return batch
        deadline = time.monotonic() + cfg.batching_window
        size = sum(len(m.body) for m in batch)
        while (
            len(batch) < cfg.batch_size and size < MAX_BATCH_BYTES and not self._stopping.is_set()
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            more = await self._broker.receive(
                cfg.queue,
                cfg.batch_size - len(batch),
                wait=min(remaining, LONG_POLL),
                visibility_timeout=cfg.visibility_timeout,
            )
            batch.extend(more)
            size += sum(len(m.body) for m in more)
        return batch

    def _record(self, ok: bool) -> None:
        self.batches += 1
        if ok:
            self._target = min(self.config.max_concurrency, self._target + 1)
        else:
            self.failures += 1
            self._target = max(1, self._target // 2)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def status(self) -> dict[str, object]:
        return {
            "name": self.config.name,
            "enabled": self.running,
            "queue": self.config.queue,
            "max_concurrency": self.config.max_concurrency,
            "target_concurrency": self._target,
            "in_flight": self.in_flight,
            "batches": self.batches,
            "failures": self.failures,
        }
