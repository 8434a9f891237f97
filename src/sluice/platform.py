"""`Platform`: binds an `App` to backends and runs its parts (runtime, dispatcher, gateway).

`sluice dev` runs every part in one process tree; `sluice worker` and `sluice gateway` run a
subset against shared backends (Redis, PostgreSQL) on any number of hosts.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Any

from sluice.app import App
from sluice.broker.contract import Broker
from sluice.config import Settings
from sluice.dispatch.async_invoke import async_queue_configs, submit_async
from sluice.dispatch.dispatcher import Dispatcher
from sluice.errors import ValidationError
from sluice.limits.contract import Limiter
from sluice.runtime.contract import InvocationResult

log = logging.getLogger("sluice.platform")


# Net new container objects between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """For a serving process, once its platform has started (and again after a deployed version
    replaced another): move what is alive now (modules, the app, routing tables: tens of
    thousands of objects) out of the collector's reach, so that a full collection no longer walks
    it (tens of ms of pause each under load), and collect the young generation less often (a
    request's objects die by reference counting; with 64 requests in flight a 700-object
    generation was collected every few hundred requests). What an earlier call froze is thawed
    and collected first: a replaced version's objects are not kept forever. User code runs in
    environment processes, not in this one."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def open_broker(settings: Settings, *, send_process: bool = False) -> Broker:
    """The broker ``settings`` name. ``send_process``: an embedded (SQLite) broker commits sends
    in a child process, off this process's event loop (what a gateway wants)."""
    url = settings.broker_url
    if url is None or url.startswith("sqlite:"):
        from sluice.broker.sqlite import SQLiteBroker

        path = url.removeprefix("sqlite:///").removeprefix("sqlite://") if url else None
        return SQLiteBroker(path or settings.broker_path, send_process=send_process)
    if url.startswith(("redis://", "rediss://", "redis+cluster://")):
        from sluice.broker.redis import RedisBroker

        return RedisBroker(url)
    raise ValidationError(f"unknown broker URL {url!r}: use sqlite:///PATH or redis://HOST:PORT")


def open_limiter(settings: Settings) -> Limiter:
    url = settings.broker_url
    if url is not None and url.startswith(("redis://", "rediss://", "redis+cluster://")):
        from sluice.limits.redis import RedisLimiter

        return RedisLimiter(url, namespace="sluice")
    from sluice.limits.local import LocalLimiter

    return LocalLimiter()


@dataclass(frozen=True, slots=True)
class Roles:
    dispatch: bool = True  # pollers + runtime (a worker)
    http: bool = True  # the gateway
    # Whether the gateway listens itself; a follower (`sluice.deploy.follower`) serves each
    # version's gateway from one server of its own.
    listen: bool = True


class Platform:
    def __init__(self, app: App, app_ref: str, settings: Settings) -> None:
        app.validate()
        self.app = app
        self.app_ref = app_ref
        self.settings = settings
        self.broker: Broker | None = None
        self.limiter: Limiter | None = None
        self.runtime: Any = None
        self.dispatcher: Dispatcher | None = None
        self.gateway: Any = None

    async def start(self, roles: Roles = Roles()) -> None:
        """Start the parts ``roles`` asks for; if one fails, stop those already started."""
        try:
            await self._start(roles)
        except BaseException:
            await self.close(grace=0)
            raise

    async def _start(self, roles: Roles) -> None:
        from sluice.runtime.pool import Runtime

        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.broker = open_broker(s, send_process=roles.http)
        await self.broker.start()
        for queue in self.app.queues.values():
            await self.broker.create_queue(queue)
        for queue in async_queue_configs(self.app.functions.values()):
            await self.broker.create_queue(queue)
        self.limiter = open_limiter(s)
        self.runtime = Runtime(
            self.app_ref,
            self.app.functions,
            limiter=self.limiter,
            log_dir=s.logs,
            max_environments=s.max_environments,
        )
        await self.runtime.start()
        if roles.dispatch:
            self.dispatcher = Dispatcher(
                self.app, self.broker, self.runtime, self.limiter, s, self.submit
            )
            self.dispatcher.start()
        if roles.http and roles.listen:
            await self._start_gateway()

    async def _start_gateway(self) -> None:
        self.gateway = self.build_gateway()
        await self.gateway.serve(self.settings.host, self.settings.port)

    def build_gateway(self) -> Any:
        """This app's `Gateway`, not listening: a caller that keeps one server across app
        versions (`sluice.deploy.follower`) hands requests to it."""
        from sluice.gateway import create_gateway
        from sluice.gateway.control import Control

        s = self.settings
        control = Control(self, loopback=s.control_loopback, token=s.control_token)
        return create_gateway(self, control=control)

    async def close(self, grace: float = 10.0) -> None:
        if self.gateway is not None:
            await self.gateway.shutdown(grace)
            self.gateway = None
        if self.dispatcher is not None:
            await self.dispatcher.stop(grace)
            self.dispatcher = None
        if self.runtime is not None:
            await self.runtime.close()
            self.runtime = None
        if self.broker is not None:
            await self.broker.close()
            self.broker = None
        aclose = getattr(self.limiter, "aclose", None)  # a Redis limiter owns a connection
        self.limiter = None
        if aclose is not None:
            await aclose()

    # -- operations the gateway, the CLI and clients use ---------------------------------

    async def submit(self, function: str, payload: bytes, *, request_id: str | None = None) -> str:
        """Event invoke: durable, returns the request id (``request_id``, or a new one)."""
        self.app.get_function(function)
        assert self.broker is not None
        return await submit_async(self.broker, function, payload, request_id=request_id)

    async def invoke(self, function: str, payload: bytes) -> InvocationResult:
        """RequestResponse invoke."""
        self.app.get_function(function)
        return await self.runtime.invoke(function, payload)

    async def status(self) -> dict[str, Any]:
        assert self.broker is not None
        queues = [(await self.broker.stats(q)).to_dict() for q in await self.broker.list_queues()]
        return {
            "app": self.app.name,
            "functions": self.runtime.status() if self.runtime else {},
            "queues": queues,
            "mappings": self.dispatcher.status() if self.dispatcher else [],
        }
