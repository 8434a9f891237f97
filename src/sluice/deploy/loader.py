"""Load the `App` of an unpacked bundle in this process.

Every version of an app imports under the same module names (``app``, ``pkg.handlers``, ...),
so before loading a version the modules of earlier bundles are dropped from ``sys.modules`` and
their directories from ``sys.path``: the import then reads the new files. The App objects already
loaded stay valid (their platforms keep references), and handlers never run in this process —
each version's runtime imports its bundle afresh in its own template process.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from sluice.app import App
from sluice.deploy.store import VersionInfo
from sluice.runtime.loader import AppLoadError, AppSource, load_app


def _inside(path: str | None, root: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(root)


def forget_bundles(cache_root: Path) -> None:
    """Drop modules imported from any bundle under `cache_root`, and their sys.path entries."""
    root = cache_root.resolve()
    for name, module in list(sys.modules.items()):
        if _inside(getattr(module, "__file__", None), root):
            del sys.modules[name]
    sys.path[:] = [p for p in sys.path if not _inside(p, root)]
    importlib.invalidate_caches()


def load_version(info: VersionInfo, bundle_dir: Path, cache_root: Path) -> tuple[App, AppSource]:
    forget_bundles(cache_root)
    app, source = load_app(f"{bundle_dir / info.entry}:{info.attr}")
    if app.name != info.app:
        raise AppLoadError(
            f"version {info.version} of {info.app!r} defines the app {app.name!r} instead"
        )
    return app, source
