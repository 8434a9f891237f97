"""Synchronous function routes through the real runtime (execution environments)."""

from __future__ import annotations

import os
from pathlib import Path

from sluice.runtime.loader import load_app
from tests.gateway.harness import GatewayThread, request, wait_until

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


def test_integration_timeout_abandons_the_answer_not_the_environment(tmp_path: Path) -> None:
    """504 at the route's integration timeout (as API Gateway answers); the invocation runs on
    to its end, and its environment serves the next request."""
    app, source = load_app(str(APP))
    with GatewayThread(app, tmp_path, runtime_ref=source.ref) as gw:
        warm = request(gw.port, "GET", "/slow")  # cold start and first run: 504 too
        assert warm.status == 504 and warm.json()["error"] == "IntegrationTimeout"
        assert gw.runtime is not None
        # The invocation finishes (however long its cold start took); its environment is idle.
        wait_until(lambda: gw.runtime.status()["slow"]["idle"] == 1)  # type: ignore[union-attr]
        timed_out = request(gw.port, "GET", "/slow")
        assert timed_out.status == 504
        assert gw.runtime.status()["slow"]["busy"] == 1
        wait_until(lambda: gw.runtime.status()["slow"]["busy"] == 0)  # type: ignore[union-attr]
        status = gw.runtime.status()["slow"]
        assert status["busy"] == 0 and status["warm"] == 1  # finished and kept, not discarded
