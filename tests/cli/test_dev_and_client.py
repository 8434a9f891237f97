"""`sluice dev` serving an app, driven through `sluice.Client`, `sluice invoke` and `sluice status`
(which find the running platform through its data dir)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import sluice
from tests.cli.test_cli import APP
from tests.cli.test_cli import sluice as run_cli
from tests.sluice_dev import sluice_dev


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    with sluice_dev(APP, tmp_path, tmp_path / "dev.log") as (url, proc):
        yield tmp_path, url
    assert proc.returncode == 0
    assert not (tmp_path / "dev.json").exists()


def test_client_invokes_and_sends(dev: tuple[Path, str]) -> None:
    data, url = dev
    with sluice.Client(data_dir=data, url=url) as client:
        assert client.invoke("echo", {"x": 1}) == {"echo": {"x": 1}, "function": "echo"}
        with pytest.raises(sluice.FunctionError) as failure:
            client.invoke("boom")
        assert failure.value.error["errorType"] == "ValueError"
        assert failure.value.error["errorMessage"] == "no good"
        with pytest.raises(sluice.SluiceError) as missing:
            client.invoke("nope")
        assert missing.value.status == 404
        request_id = client.invoke("echo", {"later": True}, asynchronous=True)
        assert len(request_id) == 36
        ids = client.send_batch("jobs", [{"n": 1}, "plain"])
        assert len(ids) == 2 and client.stats("jobs").total == 2


def test_cli_finds_the_running_platform(dev: tuple[Path, str]) -> None:
    data, _url = dev
    out = run_cli(data, "invoke", "echo", "--payload", '{"via": "cli"}')
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["echo"] == {"via": "cli"}
    status = json.loads(run_cli(data, "status", "--json").stdout)
    assert status["app"] == "clitest"
    assert status["functions"]["echo"]["warm"] >= 1
    assert {q["name"] for q in status["queues"]} >= {"jobs", "jobs-dlq"}


def test_lambda_invoke_api_headers(dev: tuple[Path, str]) -> None:
    _, url = dev
    request = urllib.request.Request(
        f"{url}/2015-03-31/functions/boom/invocations",
        data=b"{}",
        method="POST",
        headers={"X-Amz-Log-Type": "Tail"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        assert response.headers["X-Amz-Function-Error"] == "Unhandled"
        import base64

        assert "REPORT RequestId" in base64.b64decode(response.headers["X-Amz-Log-Result"]).decode()
    event = urllib.request.Request(
        f"{url}/2015-03-31/functions/echo/invocations",
        data=b"{}",
        method="POST",
        headers={"X-Amz-Invocation-Type": "Event"},
    )
    with urllib.request.urlopen(event, timeout=30) as response:
        assert response.status == 202
    assert os.environ.get("SLUICE_CONTROL_TOKEN") is None


def test_mapping_disable_and_enable(dev: tuple[Path, str]) -> None:
    data, _ = dev
    # The test app has no mapping: the error names the problem and exits non-zero.
    missing = run_cli(data, "mapping", "disable", "jobs->echo")
    assert missing.returncode == 2 and "no event source mapping" in missing.stderr
    assert run_cli(data, "mapping", "disable", "held->drain").returncode == 0
    status = json.loads(run_cli(data, "status", "--json").stdout)
    [held] = [m for m in status["mappings"] if m["name"].endswith("held->drain")]
    assert held["enabled"] is False
    assert run_cli(data, "mapping", "enable", "held->drain").returncode == 0
    status = json.loads(run_cli(data, "status", "--json").stdout)
    [held] = [m for m in status["mappings"] if m["name"].endswith("held->drain")]
    assert held["enabled"] is True


def test_access_log_is_one_json_line_per_request(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    options = ("--access-log", str(log))
    with sluice_dev(APP, tmp_path, tmp_path / "dev.log", options=options) as (url, _):
        with urllib.request.urlopen(f"{url}/_sluice/health") as r:
            request_id = r.headers["apigw-requestid"]
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{url}/nowhere?x=1")
        assert missing.value.code == 404
        missing.value.close()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["method"], e["path"], e["status"]) for e in lines] == [
        ("GET", "/_sluice/health", 200),
        ("GET", "/nowhere", 404),
    ]
    assert lines[0]["requestId"] == request_id and lines[0]["routeKey"] == "internal"
    assert lines[1]["error"] and lines[1]["ip"] == "127.0.0.1"
