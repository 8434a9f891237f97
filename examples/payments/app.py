"""Instant payments on Sluice: the buffered design from the seed.

Writes take the buffered path: POST /transfers is stored durably on the `transfers` queue and
answered 202 at once; `settle` drains the queue in batches, with `max_concurrency` sized to the
database's connection budget, so a spike never opens more connections than the database allows.
Reads (balances, transfer status) are synchronous.

Run it:  sluice dev examples/payments/app.py   (or: make run)
Database: PAYMENTS_DATABASE_URL (default: payments.db in the data directory; postgresql://...
works).
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ledger import Ledger, Transfer

import sluice

# The embedded default keeps the ledger beside the broker, in the data directory.
DATA_DIR = os.environ.get("SLUICE_DATA_DIR", ".sluice")
DATABASE_URL = os.environ.get("PAYMENTS_DATABASE_URL", f"sqlite:///{DATA_DIR}/payments.db")
DB_CONNECTIONS = int(os.environ.get("PAYMENTS_DB_CONNECTIONS", "4"))

USAGE = """Try it:
  curl -s -X POST {url}/accounts -d '{"id": "alice", "balance": 10000}'
  curl -s -X POST {url}/accounts -d '{"id": "bob", "balance": 0}'
  curl -s -X POST {url}/transfers \\
       -d '{"from": "alice", "to": "bob", "amount": 2500, "idempotency_key": "t-1"}'
  curl -s {url}/transfers/TRANSFER_ID
  curl -s {url}/accounts/bob"""

app = sluice.App("payments", usage=USAGE)
app.queue("transfers", visibility_timeout=60, dead_letter="transfers-dlq", max_receive_count=5)

TRANSFER_SCHEMA = {
    "type": "object",
    "required": ["from", "to", "amount", "idempotency_key"],
    "properties": {
        "from": {"type": "string", "minLength": 1, "maxLength": 64},
        "to": {"type": "string", "minLength": 1, "maxLength": 64},
        "amount": {"type": "integer"},
        "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 128},
    },
}

# One ledger connection per execution environment, opened on first use and kept while warm.
_ledger: Ledger | None = None


def ledger() -> Ledger:
    global _ledger
    if _ledger is None:
        _ledger = Ledger(DATABASE_URL)
    return _ledger


def _body(event: dict) -> bytes:
    """The request body; API Gateway base64-encodes bodies that are not declared as JSON/text
    (curl's default form content type, for one)."""
    body = event.get("body") or ""
    return base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()


def _json(status: int, body: object) -> dict:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": orjson.dumps(body).decode(),
    }


# PAYMENTS_DESIGN=sync is the seed's anti-pattern, kept for the spike benchmark only: every
# request settles synchronously against the database, so a spike opens as many database
# connections as there are concurrent environments.
SYNC_DESIGN = os.environ.get("PAYMENTS_DESIGN", "buffered") == "sync"

if not SYNC_DESIGN:
    app.route(
        "POST /transfers",
        to="transfers",
        schema=TRANSFER_SCHEMA,
        accepted={"transfer_id": "{messageId}"},
    )


@app.function(environment={"PAYMENTS_DATABASE_URL": DATABASE_URL}, timeout=10)
@app.route("POST /accounts")
@app.route("GET /accounts/{id}")
@app.route("GET /transfers/{id}")
def api(event, context):
    """The synchronous API (API Gateway HTTP API payload 2.0 in, proxy response out)."""
    route = event["routeKey"]
    if route == "POST /accounts":
        try:
            body = orjson.loads(_body(event))
            account, balance = body["id"], body.get("balance", 0)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _json(400, {"message": 'expected {"id": "...", "balance": <integer>}'})
        if (
            not isinstance(account, str)
            or not account
            or not isinstance(balance, int)
            or balance < 0
        ):
            return _json(400, {"message": "id must be a non-empty string, balance an integer >= 0"})
        if not ledger().create_account(account, balance):
            return _json(409, {"message": f"account {account!r} already exists"})
        return _json(201, {"id": account, "balance": balance})
    item = event["pathParameters"]["id"]
    if route == "GET /accounts/{id}":
        balance = ledger().balance(item)
        if balance is None:
            return _json(404, {"message": f"account {item!r} not found"})
        return _json(200, {"id": item, "balance": balance})
    transfer = ledger().transfer(item)
    if transfer is None:
        # Accepted but not settled yet, or never accepted: the queue is the source of truth.
        return _json(200, {"transfer_id": item, "status": "pending"})
    return _json(200, transfer)


@app.function(environment={"PAYMENTS_DATABASE_URL": DATABASE_URL}, timeout=30)
@app.consume(
    "transfers",
    batch_size=100,
    batching_window=0.2,
    max_concurrency=DB_CONNECTIONS,
    report_batch_item_failures=True,
)
def settle(event, context):
    """Settle a batch of transfers in one database transaction. A record that cannot even be
    parsed is reported as a batch item failure; after 5 receives it lands in the DLQ."""
    transfers, failures = [], []
    for record in event["Records"]:
        try:
            body = orjson.loads(record["body"])
            transfers.append(
                Transfer(
                    id=record["messageId"],
                    idempotency_key=body["idempotency_key"],
                    source=body["from"],
                    target=body["to"],
                    amount=body["amount"],
                )
            )
        except (orjson.JSONDecodeError, KeyError, TypeError):
            failures.append({"itemIdentifier": record["messageId"]})
    ledger().settle(transfers)
    return {"batchItemFailures": failures}


if SYNC_DESIGN:

    @app.function(environment={"PAYMENTS_DATABASE_URL": DATABASE_URL}, timeout=29)
    @app.route("POST /transfers", schema=TRANSFER_SCHEMA)
    def transfer_now(event, context):
        """The synchronous design: settle this one transfer against the database right now."""
        body = orjson.loads(_body(event))
        transfer = Transfer(
            id=context.aws_request_id,
            idempotency_key=body["idempotency_key"],
            source=body["from"],
            target=body["to"],
            amount=body["amount"],
        )
        ledger().settle([transfer])
        return _json(201, {"transfer_id": transfer.id})
