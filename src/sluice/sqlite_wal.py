"""Switching a SQLite database to WAL, safely when several connections open a new file at once.

Changing the journal mode needs an exclusive lock, and SQLite answers "database is locked" at
once instead of waiting in its busy handler: two stores (threads or processes) starting together
on a new database would fail. So the switch is retried until the busy timeout.
"""

from __future__ import annotations

import sqlite3
import time

RETRY_INTERVAL = 0.01


def enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put ``conn``'s database in WAL mode (a no-op when it already is), retrying while another
    connection holds the lock, for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal":
                return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
        else:
            if time.monotonic() >= deadline:
                raise sqlite3.OperationalError("could not switch the database to WAL mode")
        time.sleep(RETRY_INTERVAL)
