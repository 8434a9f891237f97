"""Run the latest deployed version of an app, and follow new ones without a restart.

A `Follower` (``sluice worker --app-name NAME``, ``sluice gateway --app-name NAME``) polls the
state store for the app's latest version. On a new one it fetches and loads the bundle, starts a
complete `Platform` for it (its own runtime and dispatcher), switches to it, and then retires the
old one: the old pollers stop taking batches, batches and requests in flight finish (within
``grace``), then its runtime and connections close. The two versions overlap for that long; they
share the mapping's concurrency leases (keyed by app and mapping, not by version), so a limit
holds through the switch. A gateway keeps one listening server across versions and hands each
request to the version that is current when it arrives.

Nothing here gives up on a backend that is down: starting, polling and switching retry with
backoff, and the current version keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sluice.app import App
from sluice.config import Settings
from sluice.deploy.loader import load_version
from sluice.deploy.store import Deployments, VersionInfo
from sluice.errors import Unavailable
from sluice.platform import Platform, Roles, settle_heap
from sluice.state import StateStore, open_state

log = logging.getLogger("sluice.deploy")

BACKOFF_START = 0.2
BACKOFF_MAX = 10.0
# What a backend that is down (or not up yet) raises; anything else is a real error.
TRANSIENT = (Unavailable, OSError, TimeoutError)


async def with_backoff(
    what: str, attempt: Callable[[], Awaitable[Any]], stop: asyncio.Event
) -> Any:
    """`attempt()` until it succeeds (its result) or `stop` is set (None), backing off while it
    raises a `TRANSIENT` error."""
    delay = BACKOFF_START
    while not stop.is_set():
        try:
            return await attempt()
        except TRANSIENT as exc:
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, BACKOFF_MAX)
    return None


async def start_platform(
    app: App, app_ref: str, settings: Settings, roles: Roles, stop: asyncio.Event
) -> Platform | None:
    """A started platform, retrying (a partly started one is closed first) while backends are
    unreachable; None if `stop` was set first."""

    async def attempt() -> Platform:
        platform = Platform(app, app_ref, settings)
        try:
            await platform.start(roles)
        except BaseException:
            await platform.close(grace=0)
            raise
        return platform

    result: Platform | None = await with_backoff(f"starting app {app.name}", attempt, stop)
    return result


def state_url(settings: Settings) -> str:
    return settings.state_url or str(settings.state_path)


@dataclass(eq=False)
class _Active:
    info: VersionInfo
    platform: Platform
    gateway: Any = None
    requests: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class Follower:
    def __init__(
        self,
        settings: Settings,
        app_name: str,
        roles: Roles,
        *,
        poll_interval: float = 2.0,
        grace: float = 30.0,
        settles_heap: bool = False,
    ) -> None:
        self.settings = settings
        self.app_name = app_name
        self.roles = roles
        self.poll_interval = poll_interval
        self.grace = grace
        # `settle_heap` after each switch: for a serving process of its own (`sluice gateway|worker
        # --app-name`), not one that hosts other work, such as a test runner.
        self.settles_heap = settles_heap
        self.cache_root = settings.data_dir / "bundles"
        self.current: _Active | None = None
        self._state: StateStore | None = None
        self._server: Any = None
        self._watcher: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._failed: set[int] = set()  # versions that would not load: wait for a newer one

    @property
    def version(self) -> int | None:
        return self.current.info.version if self.current else None

    @property
    def port(self) -> int | None:
        return self._server.port if self._server is not None else None

    async def start(self) -> bool:
        """Load and start the latest version (waiting for a first deploy); False if stopped."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        state = self._state = open_state(state_url(self.settings))

        async def connect() -> bool:
            await state.start()
            return True

        if not await with_backoff("connecting to the state store", connect, self._stop):
            return False
        while self.current is None and not self._stop.is_set():
            info = await with_backoff(
                f"reading the latest version of {self.app_name}", self._latest, self._stop
            )
            if info is None:
                log.info("no version of %s is deployed yet; waiting", self.app_name)
                await self._pause(self.poll_interval)
                continue
            await self._switch(info)
        if self.current is None:
            return False
        if self.roles.http:
            from sluice.gateway.server import HttpServer

            self._server = HttpServer(self.current.gateway.config, self._handle)
            await self._server.start(self.settings.host, self.settings.port)
        self._watcher = asyncio.create_task(self._watch(), name=f"sluice-follow:{self.app_name}")
        return True

    def request_stop(self) -> None:
        """Make a `start` that is still waiting (for a backend, a first deploy) return False."""
        self._stop.set()

    async def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._server is not None:
            await self._server.close(self.grace)
            self._server = None
        if self.current is not None:
            await self._retire(self.current)
            self.current = None
        if self._state is not None:
            await self._state.close()
            self._state = None

    # -- following -----------------------------------------------------------------------

    async def _latest(self) -> VersionInfo | None:
        assert self._state is not None
        return await Deployments(self._state).latest(self.app_name)

    async def _watch(self) -> None:
        assert self._state is not None
        deployments = Deployments(self._state)
        delay = self.poll_interval
        while not self._stop.is_set():
            await self._pause(delay)
            try:
                latest = await deployments.latest_version(self.app_name)
                newer = latest is not None and latest > (self.version or 0)
                if newer and latest not in self._failed:
                    assert latest is not None
                    await self._switch(await deployments.get(self.app_name, latest))
                delay = self.poll_interval
            except Exception as exc:
                delay = min(max(delay * 2, BACKOFF_START), BACKOFF_MAX)
                log.warning("polling versions of %s failed (%s)", self.app_name, exc)

    async def _switch(self, info: VersionInfo) -> None:
        assert self._state is not None
        try:
            directory = await Deployments(self._state).fetch(info, self.cache_root)
            app, source = load_version(info, directory, self.cache_root)
            app.validate()
        except Exception:
            # A version that cannot load never replaces a running one (nor is tried again).
            log.exception("version %d of %s does not load; not switching", info.version, info.app)
            self._failed.add(info.version)
            return
        # The version's broker is the gateway's (an SQLite one commits sends in a send process);
        # the follower's own server serves its gateway.
        roles = Roles(dispatch=self.roles.dispatch, http=self.roles.http, listen=False)
        platform = await start_platform(app, source.ref, self.settings, roles, self._stop)
        if platform is None:
            return
        active = _Active(info, platform, platform.build_gateway() if self.roles.http else None)
        active.idle.set()
        old, self.current = self.current, active
        log.info("%s: running version %d (%s)", info.app, info.version, info.digest[:12])
        if old is not None:
            await self._retire(old)
        if self.settles_heap:
            settle_heap()  # after the retired version is closed: its objects are collected

    async def _retire(self, active: _Active) -> None:
        """Drain and close a version: no new batches, in-flight batches and requests finish."""
        platform = active.platform
        if platform.dispatcher is not None:
            await platform.dispatcher.stop(self.grace)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(active.idle.wait(), self.grace)
        await platform.close(grace=0)

    async def _handle(self, request: Any) -> Any:
        active = self.current
        assert active is not None and active.gateway is not None
        active.requests += 1
        active.idle.clear()
        try:
            return await active.gateway.handle(request)
        finally:
            active.requests -= 1
            if active.requests == 0:
                active.idle.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
