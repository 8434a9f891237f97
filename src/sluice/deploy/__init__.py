"""Deployments: immutable, versioned bundles of an app in the state store.

`sluice deploy APP` packs the app's source files reproducibly (`bundle`), stores the bundle as a
content-addressed blob and records a new version (`store`); workers and gateways started with
``--app-name`` load the latest version from a local unpacked copy (`loader`) and follow new ones
without a restart (`follower`).
"""

from __future__ import annotations

from sluice.deploy.bundle import Bundle, build_bundle, unpack_bundle
from sluice.deploy.store import Deployments, VersionInfo

__all__ = ["Bundle", "Deployments", "VersionInfo", "build_bundle", "unpack_bundle"]
