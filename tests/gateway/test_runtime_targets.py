"""Synchronous function routes through the real runtime (execution environments)."""

from __future__ import annotations

import os
from pathlib import Path

from sluice.runtime.loader import load_app
from tests.gateway.harness import GatewayThread, request

APP = Path(__file__).parent / "apps" / "runtime_app.py"


def test_sync_routes_through_execution_environments(tmp_path: Path) -> None:
    app, source = load_app(str(APP))
    with GatewayThread(app, tmp_path, runtime_ref=source.ref) as gw:
        r = request(gw.port, "GET", "/hello/ada")
        assert (r.status, r.body) == (200, b"hello ada")
        assert int(r.headers["x-pid"]) != os.getpid()  # ran in an environment, not in here
        assert r.headers["x-request-id"] == r.headers["apigw-requestid"]
        again = request(gw.port, "GET", "/hello/bob")
        assert again.headers["x-pid"] == r.headers["x-pid"]  # the warm environment is reused
        failed = request(gw.port, "POST", "/fail", b"{}")
        assert failed.status == 502
        assert failed.json()["error"] == "FunctionError"
        assert "ValueError" in failed.json()["message"]
