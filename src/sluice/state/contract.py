"""The state contract: a small document store for the platform's control data.

Everything the control plane keeps — app bundles, function versions and configuration, aliases,
mappings, routes, hashed API keys, usage plans, WAF rules, workflow executions — is a JSON
document addressed by ``(kind, key)``, or a content-addressed blob (bundles), or a counter.
Messages never live here: they belong to the broker.

Semantics every backend (``sqlite`` embedded, ``postgres`` scale-out) implements and proves with
one contract suite (``tests/state/test_contract.py``):

* Each record carries a ``version`` that starts at 1 and grows by one on every ``put``.
  ``expect_version`` makes a write conditional (optimistic concurrency): ``0`` means create-only,
  ``n > 0`` means "only if the stored version is still n". A mismatch — including a missing
  record when one was expected — raises `Conflict` and changes nothing. Of two writers racing with
  the same ``expect_version``, exactly one wins.
* ``list`` orders by key in Unicode code point order (the same on every backend), filtered by a
  key prefix, and pages with ``after`` (keys strictly greater) and ``limit``.
* Blobs are addressed by the SHA-256 hex digest of their bytes; storing one twice is a no-op.
* ``incr`` is atomic across processes and hosts: concurrent callers get distinct, gap-free values.
* A backend that cannot be reached raises `sluice.errors.Unavailable` after a bounded wait.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sluice.errors import NotFound, SluiceError

__all__ = ["Conflict", "NotFound", "Record", "StateStore"]


class Conflict(SluiceError):
    """A conditional write found a different version than it expected."""

    code = "ResourceConflictException"
    status = 409

    def __init__(self, kind: str, key: str, expected: int, actual: int) -> None:
        found = f"version {actual}" if actual else "no record"
        super().__init__(f"{kind} {key!r}: expected version {expected}, found {found}")
        self.kind = kind
        self.key = key
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True, slots=True)
class Record:
    kind: str
    key: str
    value: dict[str, Any]
    version: int
    updated_at: float  # Unix time (seconds) of the write that produced this version


@runtime_checkable
class StateStore(Protocol):
    async def start(self) -> None:
        """Connect and apply schema migrations; raises `Unavailable` after a bounded wait."""

    async def close(self) -> None:
        """Release connections and threads; safe to call twice."""

    async def put(
        self, kind: str, key: str, value: dict[str, Any], *, expect_version: int | None = None
    ) -> Record:
        """Store `value` (JSON-encodable) and return the new record; `Conflict` on a mismatch."""

    async def get(self, kind: str, key: str) -> Record | None: ...

    async def list(
        self, kind: str, prefix: str = "", limit: int | None = None, *, after: str | None = None
    ) -> builtins.list[Record]:
        """Records of `kind` whose key starts with `prefix`, ordered by key."""

    async def delete(self, kind: str, key: str, *, expect_version: int | None = None) -> bool:
        """True if a record was removed, False if there was none (unconditional delete only)."""

    async def put_blob(self, data: bytes) -> str:
        """Store `data` durably and return its SHA-256 hex digest."""

    async def get_blob(self, digest: str) -> bytes:
        """The bytes stored under `digest`; raises `NotFound` when there are none."""

    async def incr(self, counter: str, by: int = 1) -> int:
        """Add `by` to `counter` (which starts at 0) and return the new value."""
