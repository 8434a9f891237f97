"""The consumer the fault-injection suite drives: ``POST /inbox`` stores a message, and
``record`` writes the number ``n`` of every message it processes to PostgreSQL
(``FAULTS_DATABASE_URL``), counting deliveries, so lost and duplicated messages are visible.

The row is committed before the function returns, so a message deleted from the queue is
already recorded; a crash in between only adds a delivery."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import psycopg

import sluice

app = sluice.App("faults")
# A short visibility timeout brings a killed worker's batches back quickly; many receives keep a
# message out of the DLQ through a 10 s database outage.
app.queue("inbox", visibility_timeout=5, dead_letter="inbox-dlq", max_receive_count=50)
app.route("POST /inbox", to="inbox")

RECORD = (
    "INSERT INTO processed (n, deliveries) SELECT * FROM unnest(%s::bigint[], %s::int[]) "
    "ON CONFLICT (n) DO UPDATE SET deliveries = processed.deliveries + excluded.deliveries"
)


class _Database:
    """One connection per execution environment, reopened after a failure."""

    def __init__(self) -> None:
        self.conn: psycopg.Connection[Any] | None = None

    def record(self, counts: Counter[int]) -> None:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(
                os.environ["FAULTS_DATABASE_URL"], autocommit=True, connect_timeout=2
            )
        try:
            self.conn.execute(RECORD, (list(counts), list(counts.values())))
        except psycopg.Error:
            self.conn.close()
            self.conn = None
            raise  # the batch fails and comes back after the visibility timeout


_db = _Database()


@app.consume("inbox", batch_size=100, max_concurrency=4)
def record(event: dict[str, Any], context: object) -> None:
    _db.record(Counter(json.loads(r["body"])["n"] for r in event["Records"]))
