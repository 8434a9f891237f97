"""The payments example over HTTP, as a user drives it: `sluice dev` on the embedded default."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sluice_dev import sluice_dev

APP = str(Path(__file__).parents[2] / "examples" / "payments" / "app.py")


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with sluice_dev(APP, tmp_path / "d", tmp_path / "dev.log", cwd=tmp_path) as (base, _):
        yield base
    assert (tmp_path / "d" / "payments.db").exists()  # the ledger lives in the data dir


def call(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def settled(url: str, transfer_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        _, status = call(url, "GET", f"/transfers/{transfer_id}")
        if status["status"] != "pending":
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def test_transfers_settle_once_per_idempotency_key_and_reject_with_a_reason(url: str) -> None:
    assert call(url, "POST", "/accounts", {"id": "alice", "balance": 10_000}) == (
        201,
        {"id": "alice", "balance": 10_000},
    )
    assert call(url, "POST", "/accounts", {"id": "bob", "balance": 0})[0] == 201
    assert call(url, "POST", "/accounts", {"id": "bob", "balance": 5})[0] == 409

    transfer = {"from": "alice", "to": "bob", "amount": 2_500, "idempotency_key": "k-1"}
    status, first = call(url, "POST", "/transfers", transfer)
    assert status == 202 and set(first) == {"transfer_id"}
    status, again = call(url, "POST", "/transfers", transfer)
    assert status == 202 and again["transfer_id"] != first["transfer_id"]
    original = settled(url, first["transfer_id"])
    assert original["status"] == "settled"
    repeat = settled(url, again["transfer_id"])
    # One of the two is the original and the other its alias: never moved twice. Which one is
    # not promised: a standard queue may deliver the second message first (two batches at once).
    assert repeat["transfer_id"] == original["transfer_id"]
    assert original["transfer_id"] in {first["transfer_id"], again["transfer_id"]}
    assert call(url, "GET", "/accounts/bob") == (200, {"id": "bob", "balance": 2_500})
    assert call(url, "GET", "/accounts/alice") == (200, {"id": "alice", "balance": 7_500})

    too_much = {"from": "bob", "to": "alice", "amount": 9_999, "idempotency_key": "k-2"}
    _, rejected = call(url, "POST", "/transfers", too_much)
    outcome = settled(url, rejected["transfer_id"])
    assert outcome["status"] == "rejected" and outcome["reason"] == "insufficient funds"
    assert call(url, "GET", "/accounts/bob")[1]["balance"] == 2_500


def test_bad_requests_get_a_clear_400(url: str) -> None:
    status, body = call(url, "POST", "/transfers", {"from": "alice", "amount": 5})
    assert status == 400 and "to is required" in body["message"]
    status, body = call(
        url, "POST", "/transfers", {"from": "a", "to": "b", "amount": "5", "idempotency_key": "x"}
    )
    assert status == 400 and "amount must be of type integer" in body["message"]
    assert call(url, "GET", "/accounts/nobody")[0] == 404
