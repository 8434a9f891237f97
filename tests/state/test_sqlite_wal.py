"""enable_wal waits out another connection's lock instead of failing at once."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from sluice.sqlite_wal import enable_wal


def _locked(path: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE IF NOT EXISTS t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_switches_once_the_lock_is_released(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    holder = _locked(path)
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    release = threading.Timer(0.2, holder.rollback)
    release.start()
    try:
        enable_wal(conn, timeout=5)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        enable_wal(conn, timeout=0)  # already WAL: nothing to wait for
    finally:
        release.join()
        holder.close()
        conn.close()


def test_gives_up_at_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    holder = _locked(path)
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            enable_wal(conn, timeout=0.1)
    finally:
        holder.close()
        conn.close()
