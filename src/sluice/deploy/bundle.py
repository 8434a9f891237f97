"""Pack an app's source files into a reproducible tar archive, and unpack one safely.

What is packed: for ``path/to/app.py`` the directory that is the app's import root (the file's
directory, or above it while it is inside a package), for ``package.module:app`` the top-level
package (or module) under the current directory. Hidden entries, ``__pycache__`` and compiled
files are left out. The archive is reproducible: entries in sorted order with fixed times,
owners and modes, and no compression (compressors differ between library versions), so the same
files give the same bytes — and the same SHA-256 digest — on every host.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sluice.errors import ValidationError
from sluice.runtime.loader import resolve

MAX_BUNDLE_BYTES = 64 << 20  # Lambda takes 50 MB zipped / 250 MB unzipped; source is far smaller
SKIP_DIRS = frozenset({"__pycache__", "node_modules"})
SKIP_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True, slots=True)
class Bundle:
    data: bytes  # the tar archive
    entry: str  # the app's file inside the archive (POSIX path)
    attr: str  # the App's attribute name in that file's module
    files: tuple[str, ...]


def _source_root(ref: str) -> tuple[Path, Path, Path]:
    """``(what to pack, the app's file, the import root)`` for an app reference; archive names
    are relative to the import root, so the app imports under the same module name."""
    module, _, root, target = resolve(ref)
    if target.endswith(".py") and Path(target).is_file():
        return Path(root), Path(target), Path(root)
    base = Path(root) / Path(*module.split("."))
    top = Path(root) / module.split(".")[0]
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return (top if top.is_dir() else top.with_suffix(".py")), candidate, Path(root)
    raise ValidationError(
        f"cannot find the source of {module!r} under {root}: deploy a path/to/app.py instead"
    )


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found: list[Path] = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
        for name in sorted(names):
            path = Path(directory) / name
            if name.startswith(".") or name.endswith(SKIP_SUFFIXES) or not path.is_file():
                continue
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def build_bundle(ref: str, attr: str) -> Bundle:
    """The bundle of the app `ref` names (already loaded by the caller, who knows `attr`)."""
    root, app_file, base = _source_root(ref)
    buffer = io.BytesIO()
    names: list[str] = []
    total = 0
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _files(root):
            name = path.relative_to(base).as_posix()
            data = path.read_bytes()
            total += len(data)
            if total > MAX_BUNDLE_BYTES:
                raise ValidationError(
                    f"the files under {base} exceed {MAX_BUNDLE_BYTES >> 20} MB: deploy a smaller "
                    "directory (the app's import root is packed whole)"
                )
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
            names.append(name)
    entry = app_file.relative_to(base).as_posix()
    return Bundle(buffer.getvalue(), entry, attr, tuple(names))


def unpack_bundle(data: bytes, dest: Path) -> None:
    """Extract regular files only, refusing any path that would leave `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar.getmembers():
            path = PurePosixPath(member.name)
            if not member.isfile() or path.is_absolute() or ".." in path.parts:
                raise ValidationError(f"bundle entry {member.name!r} is not a plain relative file")
            source = tar.extractfile(member)
            assert source is not None
            target = dest.joinpath(*path.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read())
            target.chmod(member.mode & 0o755)
