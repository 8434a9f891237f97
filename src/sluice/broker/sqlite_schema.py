"""The SQLite broker's schema, connection setup and the statements it runs.

Times are integer milliseconds since the epoch. A message is *visible* when ``visible_at <= now``;
a message with ``visible_at > now`` is *in flight* when it has been received (``receive_count >
0``) and *delayed* otherwise. ``token`` changes on every receive; a receipt handle is
``<id>.<token as hex>``, so a handle from an earlier receive no longer matches. ``id`` only grows
(AUTOINCREMENT), which makes it the FIFO sequence number as well.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

from sluice.sqlite_wal import enable_wal

BUSY_TIMEOUT_MS = 5000
MIN_SQLITE = (3, 35, 0)

SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    qid INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    token INTEGER NOT NULL DEFAULT 0,
    receive_count INTEGER NOT NULL DEFAULT 0,
    first_receive INTEGER NOT NULL DEFAULT 0,
    sent_at INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    md5 TEXT NOT NULL,
    body TEXT NOT NULL,
    attributes TEXT,
    group_id TEXT,
    dedup_id TEXT,
    dl_reason TEXT
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (qid, visible_at);
CREATE INDEX IF NOT EXISTS messages_age ON messages (qid, sent_at);
CREATE INDEX IF NOT EXISTS messages_group ON messages (qid, group_id, id)
    WHERE group_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS dedup (
    qid INTEGER NOT NULL,
    dedup_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (qid, dedup_id)
) WITHOUT ROWID;
"""

INSERT_MESSAGE = (
    "INSERT INTO messages (qid, visible_at, sent_at, message_id, md5, body, attributes,"
    " group_id, dedup_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# A standard queue's messages (no group or deduplication id), many rows per statement: each
# statement releases and retakes the GIL once (executemany does that once per row), and the
# event loop pays for every time the writer thread takes the GIL back. A statement inserts only
# if the queue still has the id and configuration the rows were checked against, so it needs no
# lookup before it in the same transaction.
STANDARD_COLUMNS = 6  # visible_at, sent_at, message_id, md5, body, attributes
MAX_ROWS_PER_INSERT = 256


def insert_standard(rows: int) -> str:
    """The INSERT of up to ``rows`` standard messages (rows whose message id is NULL are padding),
    parameters: `STANDARD_COLUMNS` per row, then the queue's id and configuration text. ``rows``
    is a power of two up to `MAX_ROWS_PER_INSERT`, so only a few texts are prepared and cached."""
    return _INSERT_STANDARD[rows]


_INSERT_STANDARD = {
    # Starts with INSERT, not WITH: Python's sqlite3 reports a rowcount for the former only.
    n: "INSERT INTO messages (qid, visible_at, sent_at, message_id, md5, body, attributes)"
    " SELECT q.id, v.column1, v.column2, v.column3, v.column4, v.column5, v.column6"
    " FROM queues AS q CROSS JOIN (VALUES "
    + ", ".join(["(?, ?, ?, ?, ?, ?)"] * n)
    + ") AS v WHERE q.id = ? AND q.config = ? AND v.column3 IS NOT NULL"
    for n in (1 << i for i in range(MAX_ROWS_PER_INSERT.bit_length()))
}

# Columns every statement that hands out messages returns, in this order.
MESSAGE_COLUMNS = (
    "id, message_id, body, attributes, receive_count, sent_at, first_receive, md5,"
    " group_id, dedup_id, dl_reason"
)

# A receive marks the messages it takes with its own random token and visibility deadline
# (no RETURNING: that is one SQLite step, so one GIL release and re-take, per row), then reads
# them back as one JSON array in a single step (`DELIVERED`), found through messages_ready.
_MARK_RECEIVED = (
    "UPDATE messages SET visible_at = :until, token = :token, receive_count = receive_count + 1,"
    " first_receive = CASE first_receive WHEN 0 THEN :now ELSE first_receive END"
)

MARK_STANDARD = (
    f"{_MARK_RECEIVED} WHERE id IN (SELECT id FROM messages WHERE qid = :qid"
    " AND visible_at <= :now AND sent_at >= :cutoff ORDER BY visible_at LIMIT :limit)"
)

MARK_IDS = f"{_MARK_RECEIVED} WHERE id IN (SELECT value FROM json_each(:ids))"

# MARK_STANDARD outside a transaction: only if the queue still has the configuration the
# receive was checked against (no lookup before it).
MARK_STANDARD_GUARDED = (
    f"{MARK_STANDARD} AND EXISTS (SELECT 1 FROM queues WHERE id = :qid AND config = :config)"
)

# Marked messages received once too often go to the dead-letter queue instead.
MOVE_OVERDRAWN = (
    "UPDATE messages SET qid = :to, visible_at = :now, token = 0, receive_count = 0,"
    " first_receive = 0, dl_reason = :reason"
    " WHERE qid = :qid AND visible_at = :until AND token = :token AND receive_count > :max"
)

DELIVERED = (
    f"SELECT json_group_array(json_array({MESSAGE_COLUMNS})) FROM messages"
    " WHERE qid = :qid AND visible_at = :until AND token = :token"
)

# FIFO: groups that have a message in flight deliver nothing.
HELD_GROUPS = (
    "SELECT DISTINCT group_id FROM messages WHERE qid = ? AND visible_at > ? AND receive_count > 0"
)
VISIBLE_GROUPS = (
    "SELECT group_id FROM messages WHERE qid = ? AND visible_at <= ? AND sent_at >= ?"
    " ORDER BY visible_at"
)
GROUP_HEAD = (
    "SELECT id, visible_at, sent_at FROM messages WHERE qid = ? AND group_id = ?"
    " ORDER BY id LIMIT ?"
)

# Deletes by receipt, one statement per receipt token (a receive gives all its messages one
# token, so usually one statement, one SQLite step, for a whole batch). Only when fewer rows went
# than receipts were given is it redone with RETURNING (one step per row) to tell which matched.
DELETE_BY_RECEIPT = (  # "+": look the rows up by id, never scan the queue through an index
    "DELETE FROM messages WHERE +qid = ?1 AND +token = ?2"
    " AND id IN (SELECT value FROM json_each(?3))"
)
DELETE_BY_RECEIPT_RETURNING = f"{DELETE_BY_RECEIPT} RETURNING id"
# Outside a transaction: all of the receipts' messages, or none of them.
DELETE_ALL_BY_RECEIPT = (
    f"{DELETE_BY_RECEIPT} AND (SELECT COUNT(*) FROM messages WHERE +qid = ?1 AND +token = ?2"
    " AND id IN (SELECT value FROM json_each(?3))) = ?4"
)

MOVE_TO = (
    "UPDATE messages SET qid = :to, visible_at = :now, token = 0, receive_count = 0,"
    " first_receive = 0, dl_reason = :reason WHERE id IN (SELECT value FROM json_each(:ids))"
)


def connect(path: Path, pragmas: Mapping[str, str | int]) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, fsync on commit."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise sqlite3.NotSupportedError(
            f"the broker needs SQLite >= 3.35 (RETURNING); this Python has {sqlite3.sqlite_version}"
        )
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        enable_wal(conn, BUSY_TIMEOUT_MS / 1000)
        conn.execute("PRAGMA synchronous = FULL")
        for name, value in pragmas.items():
            if not name.replace("_", "").isalnum():
                raise ValueError(f"not a pragma name: {name!r}")
            conn.execute(f"PRAGMA {name} = {int(value) if isinstance(value, int) else value!r}")
    except BaseException:
        conn.close()
        raise
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
