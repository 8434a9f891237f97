"""The app the scale-out topology runs: POST /work puts the body on a durable queue; `record`
writes every message it processed into PostgreSQL.

Per batch, in one transaction: each message id is inserted with its body key (``g:n``), a
message seen again bumps ``seen`` (a duplicate delivery), and one row records the batch's start
and end time (``time.time()``, one clock for every process on the host) so the run can compute
the peak number of batches that ran at once. A batch killed before its commit leaves nothing.
Configuration comes from the environment: ``TOPO_PG`` (URL) and ``TOPO_TABLE`` (table prefix).
"""

import json
import os
import time

import psycopg

import sluice

MAX_CONCURRENCY = 4
BATCH_SIZE = 100

app = sluice.App("topo")
app.queue("work", visibility_timeout=5, dead_letter="work-dlq", max_receive_count=10)
app.add_route("POST /work", "queue:work")

# One connection per execution environment, opened on its first batch and reused while warm.
_connections: dict[str, psycopg.Connection] = {}


def _connection() -> psycopg.Connection:
    url = os.environ["TOPO_PG"]
    conn = _connections.get(url)
    if conn is None or conn.closed:
        conn = _connections[url] = psycopg.connect(url)
    return conn


@app.consume("work", batch_size=BATCH_SIZE, max_concurrency=MAX_CONCURRENCY)
def record(event, context):
    started = time.time()
    table = os.environ["TOPO_TABLE"]
    ids, keys = [], []
    for r in event["Records"]:
        body = json.loads(r["body"])
        ids.append(r["messageId"])
        keys.append(f"{body['g']}:{body['n']}")
    conn = _connection()
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {table}_ids (id, key) SELECT * FROM unnest(%s::text[], %s::text[]) "
            f"ON CONFLICT (id) DO UPDATE SET seen = {table}_ids.seen + 1",
            (ids, keys),
        )
        cur.execute(
            f"INSERT INTO {table}_batches (pid, size, started, ended) VALUES (%s, %s, %s, %s)",
            (os.getpid(), len(ids), started, time.time()),
        )
