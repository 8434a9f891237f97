"""Find the `App` an app reference names: ``path/to/app.py`` or ``package.module[:attr]``."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from sluice.app import App
from sluice.errors import SluiceError


class AppLoadError(SluiceError):
    """The app reference cannot be imported, or does not name exactly one App."""

    code = "Runtime.ImportModuleError"


@dataclass(frozen=True, slots=True)
class AppSource:
    """How to import the app again, in another process."""

    ref: str  # "/abs/path/app.py:attr" or "package.module:attr": load_app(ref) finds it again
    module: str
    attr: str
    path: str  # directory to put on sys.path first


def resolve(ref: str) -> tuple[str, str | None, str, str]:
    """``(module, attr or None, sys.path entry, normalised target)`` for a reference, without
    importing it."""
    target, _, attr = ref.partition(":")
    if target.endswith(".py") or os.sep in target or (os.altsep and os.altsep in target):
        file = Path(target).resolve()
        if not file.is_file():
            raise AppLoadError(f"app file {target!r} does not exist")
        # Import it under its package name, so handlers' modules are what they would be
        # when imported from the package root.
        parts = [file.stem]
        root = file.parent
        while (root / "__init__.py").is_file():
            parts.insert(0, root.name)
            root = root.parent
        return ".".join(parts), attr or None, str(root), str(file)
    if not target or not all(p.isidentifier() for p in target.split(".")):
        raise AppLoadError(f"app reference {ref!r} is neither a .py file nor a module path")
    return target, attr or None, os.getcwd(), target


def load_app(ref: str) -> tuple[App, AppSource]:
    module_name, attr, path, target = resolve(ref)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(f"Unable to import module {module_name!r}: {exc}") from exc
    if attr is not None:
        app = getattr(module, attr, None)
        if not isinstance(app, App):
            raise AppLoadError(f"{module_name}:{attr} is not a sluice.App (got {type(app)!r})")
    else:
        found = {name: v for name, v in vars(module).items() if isinstance(v, App)}
        if len(found) != 1:
            what = "no sluice.App" if not found else f"several Apps ({', '.join(sorted(found))})"
            raise AppLoadError(f"module {module_name!r} defines {what}; name one as MODULE:ATTR")
        attr, app = next(iter(found.items()))
    return app, AppSource(f"{target}:{attr}", module_name, attr, path)
