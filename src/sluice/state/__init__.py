"""The state store: the platform's control data, behind one small contract (`StateStore`).

Backends are chosen by URL with `open_state`; importing this package loads neither SQLite
threads nor a PostgreSQL driver until one is asked for.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sluice.errors import ValidationError
from sluice.state.contract import Conflict, NotFound, Record, StateStore

__all__ = ["Conflict", "NotFound", "Record", "StateStore", "open_state"]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_state(url: str) -> StateStore:
    """A (not yet started) store for `url`.

    * ``sqlite:///relative/state.db``, ``sqlite:////absolute/state.db`` or a plain path: SQLite.
    * ``postgresql://user@host:port/db`` (or ``postgres://``): PostgreSQL. An optional
      ``?schema=name`` query parameter picks the schema (default ``sluice``); every other
      parameter is passed to libpq.
    """
    if not isinstance(url, str) or not url:
        raise ValidationError(f"state URL must be a non-empty string, got {url!r}")
    if url.startswith(_POSTGRES_SCHEMES):
        from sluice.state.postgres import PostgresState

        conninfo, schema = _split_schema(url)
        if schema is None:
            return PostgresState(conninfo)
        return PostgresState(conninfo, schema=schema)
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:///").removeprefix("sqlite://")
        if not path:
            raise ValidationError(f"state URL {url!r} names no file: use sqlite:///PATH")
    elif "://" in url:
        raise ValidationError(
            f"unknown state URL {url!r}: use sqlite:///PATH, a path, or postgresql://..."
        )
    else:
        path = url
    from sluice.state.sqlite import SQLiteState

    return SQLiteState(path)


def _split_schema(url: str) -> tuple[str, str | None]:
    """Take our own ``schema`` parameter out of a PostgreSQL URL, leaving the rest to libpq."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for name, value in params if name == "schema"]
    rest = [(name, value) for name, value in params if name != "schema"]
    return urlunsplit(parts._replace(query=urlencode(rest))), (schemas[-1] if schemas else None)
