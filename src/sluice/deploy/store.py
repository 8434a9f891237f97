"""Versions of deployed apps in the state store.

A deploy stores the bundle with ``put_blob`` (content-addressed: the same files are stored once),
takes the next version number from the counter ``deploy:<app>`` (atomic across hosts, no gaps)
and writes an immutable record ``app_version/<app>:<version>`` (create-only). The record
``app/<app>`` names the latest version; it only ever moves forward, so of two racing deploys the
higher version wins. Workers poll that one small record.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sluice.deploy.bundle import Bundle, unpack_bundle
from sluice.errors import NotFound, ValidationError
from sluice.state.contract import Conflict, StateStore

VERSION_KIND = "app_version"
APP_KIND = "app"
READY_MARK = ".sluice-bundle"  # written last into an unpacked bundle: the copy is complete


@dataclass(frozen=True, slots=True)
class VersionInfo:
    app: str
    version: int
    digest: str  # SHA-256 of the bundle
    entry: str  # the app's file inside the bundle
    attr: str
    size: int
    files: int
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _version_key(app: str, version: int) -> str:
    return f"{app}:{version:010d}"  # zero-padded so keys list in version order


class Deployments:
    def __init__(self, state: StateStore) -> None:
        self._state = state

    async def deploy(self, app: str, bundle: Bundle) -> VersionInfo:
        digest = await self._state.put_blob(bundle.data)
        version = await self._state.incr(f"deploy:{app}")
        info = VersionInfo(
            app,
            version,
            digest,
            bundle.entry,
            bundle.attr,
            len(bundle.data),
            len(bundle.files),
            time.time(),
        )
        await self._state.put(
            VERSION_KIND, _version_key(app, version), info.to_dict(), expect_version=0
        )
        await self._advance(app, version)
        return info

    async def _advance(self, app: str, version: int) -> None:
        """Point ``app/<app>`` at `version` unless a later deploy got there first."""
        while True:
            current = await self._state.get(APP_KIND, app)
            if current is not None and int(current.value["latest"]) >= version:
                return
            try:
                await self._state.put(
                    APP_KIND,
                    app,
                    {"latest": version},
                    expect_version=current.version if current else 0,
                )
                return
            except Conflict:
                continue  # another deploy moved it: look again

    async def latest_version(self, app: str) -> int | None:
        record = await self._state.get(APP_KIND, app)
        return None if record is None else int(record.value["latest"])

    async def get(self, app: str, version: int) -> VersionInfo:
        record = await self._state.get(VERSION_KIND, _version_key(app, version))
        if record is None:
            raise NotFound(f"app {app!r} has no version {version}")
        return VersionInfo(**record.value)

    async def latest(self, app: str) -> VersionInfo | None:
        version = await self.latest_version(app)
        return None if version is None else await self.get(app, version)

    async def versions(self, app: str) -> list[VersionInfo]:
        records = await self._state.list(VERSION_KIND, prefix=f"{app}:")
        return [VersionInfo(**r.value) for r in records]

    async def fetch(self, info: VersionInfo, cache_root: Path) -> Path:
        """The bundle unpacked under ``cache_root/<digest>`` (downloaded once per host)."""
        target = cache_root / info.digest
        if (target / READY_MARK).is_file():
            return target
        data = await self._state.get_blob(info.digest)
        if hashlib.sha256(data).hexdigest() != info.digest:
            raise ValidationError(f"bundle {info.digest} is corrupt in the state store")
        # Unpack beside the target and rename into place: a crash leaves no half copy behind
        # a ready mark, and concurrent workers on one host do not see each other's partial work.
        staging = cache_root / f".tmp-{info.digest[:16]}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            unpack_bundle(data, staging)
            (staging / READY_MARK).write_text(info.digest)
            try:
                staging.rename(target)
            except OSError:
                if not (target / READY_MARK).is_file():  # not a concurrent unpack that won
                    shutil.rmtree(target, ignore_errors=True)
                    staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target
