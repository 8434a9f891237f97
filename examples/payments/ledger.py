"""The payments ledger: accounts, transfers and double-entry ledger lines, on SQLite (embedded
default) or PostgreSQL. Amounts are integers in minor units (cents)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    balance BIGINT NOT NULL CHECK (balance >= 0)
);
CREATE TABLE IF NOT EXISTS transfers (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    from_account TEXT NOT NULL,
    to_account TEXT NOT NULL,
    amount BIGINT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS transfer_aliases (
    id TEXT PRIMARY KEY,
    original_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    transfer_id TEXT NOT NULL,
    account TEXT NOT NULL,
    amount BIGINT NOT NULL,
    PRIMARY KEY (transfer_id, account)
);
"""

MAX_AMOUNT = 10_000_000  # risk rule: a single transfer above this is rejected


@dataclass(frozen=True)
class Transfer:
    id: str
    idempotency_key: str
    source: str
    target: str
    amount: int


def risk_check(t: Transfer) -> str | None:
    """Rule-based risk check run before settlement; the reason for a rejection, or None."""
    if not isinstance(t.amount, int) or isinstance(t.amount, bool) or t.amount <= 0:
        return "amount must be a positive integer (minor units)"
    if t.amount > MAX_AMOUNT:
        return f"amount over the single-transfer limit of {MAX_AMOUNT}"
    if t.source == t.target:
        return "from and to are the same account"
    return None


class Ledger:
    """One connection per execution environment (opened at first use, reused while warm)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith(("postgresql://", "postgres://"))
        self._conn: Any = None

    @property
    def conn(self) -> Any:
        if self._conn is None:
            if self.postgres:
                import psycopg

                # The function's name tags the connection, so pg_stat_activity shows who holds it.
                name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "payments")
                self._conn = psycopg.connect(
                    self.url, autocommit=False, application_name=f"payments-{name}"
                )
            else:
                path = self.url.removeprefix("sqlite:///")
                self._conn = sqlite3.connect(path, timeout=60, isolation_level=None)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
            self.migrate()
        return self._conn

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.postgres else statement

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        conn = self.conn
        if self.postgres:
            with conn.transaction():
                yield conn.cursor()
        else:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn.cursor()
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def migrate(self) -> None:
        conn = self._conn
        if self.postgres:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(4242)")
                conn.execute(SCHEMA)
        else:
            conn.executescript(SCHEMA)

    # -- reads and account creation (the synchronous API) -------------------------------

    def create_account(self, account: str, balance: int) -> bool:
        with self.transaction() as cur:
            cur.execute(self._sql("SELECT 1 FROM accounts WHERE id = ?"), (account,))
            if cur.fetchone():
                return False
            cur.execute(
                self._sql("INSERT INTO accounts (id, balance) VALUES (?, ?)"), (account, balance)
            )
            return True

    def balance(self, account: str) -> int | None:
        with self.transaction() as cur:
            cur.execute(self._sql("SELECT balance FROM accounts WHERE id = ?"), (account,))
            row = cur.fetchone()
        return None if row is None else int(row[0])

    def transfer(self, transfer_id: str) -> dict[str, Any] | None:
        with self.transaction() as cur:
            cur.execute(
                self._sql("SELECT original_id FROM transfer_aliases WHERE id = ?"), (transfer_id,)
            )
            alias = cur.fetchone()
            lookup = alias[0] if alias else transfer_id
            cur.execute(
                self._sql(
                    "SELECT id, from_account, to_account, amount, status, reason "
                    "FROM transfers WHERE id = ?"
                ),
                (lookup,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        result = {
            "transfer_id": row[0],
            "from": row[1],
            "to": row[2],
            "amount": int(row[3]),
            "status": row[4],
        }
        if row[5]:
            result["reason"] = row[5]
        if alias:
            result["duplicate_request"] = transfer_id
        return result

    # -- settlement (the buffered path) ------------------------------------------------

    def settle(self, transfers: Sequence[Transfer]) -> None:
        """Settle a batch in ONE transaction: each transfer is settled, rejected (with its
        reason), or - for a repeated idempotency key - recorded as an alias of the first."""
        with self.transaction() as cur:
            for t in transfers:
                self._settle_one(cur, t)

    def _settle_one(self, cur: Any, t: Transfer) -> None:
        sql = self._sql
        cur.execute(sql("SELECT id FROM transfers WHERE idempotency_key = ?"), (t.idempotency_key,))
        existing = cur.fetchone()
        if existing is not None:
            if existing[0] != t.id:  # the same key again: never move money twice
                cur.execute(
                    sql(
                        "INSERT INTO transfer_aliases (id, original_id) VALUES (?, ?) "
                        "ON CONFLICT (id) DO NOTHING"
                    ),
                    (t.id, existing[0]),
                )
            return  # a redelivered message of an already settled transfer: nothing to do
        reason = risk_check(t) or self._funds_check(cur, t)
        status = "rejected" if reason else "settled"
        cur.execute(
            sql(
                "INSERT INTO transfers (id, idempotency_key, from_account, to_account, amount, "
                "status, reason) VALUES (?, ?, ?, ?, ?, ?, ?)"
            ),
            (
                t.id,
                t.idempotency_key,
                t.source,
                t.target,
                t.amount if isinstance(t.amount, int) else 0,
                status,
                reason,
            ),
        )
        if reason:
            return
        cur.execute(
            sql("UPDATE accounts SET balance = balance - ? WHERE id = ?"), (t.amount, t.source)
        )
        cur.execute(
            sql("UPDATE accounts SET balance = balance + ? WHERE id = ?"), (t.amount, t.target)
        )
        cur.execute(
            sql("INSERT INTO ledger (transfer_id, account, amount) VALUES (?, ?, ?), (?, ?, ?)"),
            (t.id, t.source, -t.amount, t.id, t.target, t.amount),
        )

    def _funds_check(self, cur: Any, t: Transfer) -> str | None:
        sql = self._sql
        lock = " ORDER BY id FOR UPDATE" if self.postgres else ""  # SQLite: BEGIN IMMEDIATE
        cur.execute(
            sql(f"SELECT id, balance FROM accounts WHERE id IN (?, ?){lock}"), (t.source, t.target)
        )
        balances = {row[0]: int(row[1]) for row in cur.fetchall()}
        if t.source not in balances:
            return f"account {t.source!r} does not exist"
        if t.target not in balances:
            return f"account {t.target!r} does not exist"
        if balances[t.source] < t.amount:
            return "insufficient funds"
        return None
