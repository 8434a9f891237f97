"""The gateway benchmark's pieces, end to end at a size that takes seconds: a real gateway
process, real wrk (POST via the Lua script), and the durability check against the broker file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from gateway_bench import (
    BY_KEY,
    Servers,
    measure_row,
    post_script,
    queued,
    raise_nofile,
    swept,
    verdicts,
)
from harness import Report, Result, WrkOptions


@pytest.fixture
def wrk() -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")


def test_post_script_is_valid_lua_with_the_json_body(tmp_path: Path) -> None:
    text = post_script(tmp_path).read_text()
    assert 'wrk.method = "POST"' in text
    assert '\\"amount\\": 1250' in text  # quotes escaped inside the Lua string


def test_queue_row_measures_and_every_202_is_stored(tmp_path: Path, wrk: None) -> None:
    raise_nofile()
    row = BY_KEY["3"]
    servers = Servers(tmp_path, "redis://127.0.0.1:6379/13")
    result = measure_row(row, servers, WrkOptions(1, 8), post_script(tmp_path), servers.redis_url)
    assert result.value > 0 and result.extra["errors"] == 0
    assert int(result.extra["stored"]) >= int(result.extra["requests"])
    data_dir = next(tmp_path.glob("data*"))
    assert queued(data_dir, "bench") >= int(result.extra["requests"])


def test_verdicts_compare_against_the_goals() -> None:
    """Each goal's ratio of the median rounds, with the ratio within each round beside it."""
    group = "gateway paths, one server process"
    report = Report("t", results_dir=Path("/nonexistent"))
    rounds: dict[str, list[Result]] = {}
    for name, median, per_round in [
        ("(1) a", 100.0, [100.0, 90.0]),
        ("(2) b", 40.0, [40.0, 27.0]),
        ("(3) c", 30.0, [30.0, 36.0]),
        ("(4) d", 2.0, [2.0, 3.0]),
        ("(7) e", 75.0, [75.0, 60.0]),
    ]:
        report.add(Result(group, name, "req/s", median))
        rounds[name] = [Result(group, name, "req/s", value) for value in per_round]
    assert verdicts(report, rounds) == [
        "(3)/(7) = 0.40 (goal >= 0.50: NOT met); within each round 0.40 / 0.60, median 0.50",
        "(3)/(1) = 0.30 (no goal (a cheaper request than (3)'s)); within each round 0.30 / 0.40,"
        " median 0.35",
        "(3)/(4) = 15.00 (goal >= 10.00: met); within each round 15.00 / 12.00, median 13.50",
        "(2)/(1) = 0.40 (goal >= 0.33: met); within each round 0.40 / 0.30, median 0.35",
    ]


def test_the_sweep_repeats_the_goals_rows_at_each_connection_count() -> None:
    rows = swept([128, 256], chosen={"1", "3", "7"})
    assert [r.key for r in rows] == ["1@128", "7@128", "3@128", "1@256", "7@256", "3@256"]
    assert rows[2].name == "(3@128) queue route, durable 202 (POST JSON), 128 connections"
    assert rows[2].post and rows[2].connections == 128 and rows[2].path == "/enqueue"


def test_each_connection_count_gets_its_own_verdicts_and_the_peer_only_the_base() -> None:
    group = "gateway paths, one server process"
    report = Report("t", results_dir=Path("/nonexistent"))
    rounds: dict[str, list[Result]] = {}
    for name, value in [
        ("(1) a", 100.0),
        ("(3) c", 30.0),
        ("(4) d", 2.0),
        ("(7) e", 60.0),
        ("(1@128) a", 90.0),
        ("(3@128) c", 54.0),
        ("(7@128) e", 90.0),
        ("(2@256) b", 40.0),
        ("(1@256) a", 100.0),
    ]:
        report.add(Result(group, name, "req/s", value))
        rounds[name] = [Result(group, name, "req/s", value)]
    lines = [line.split(";")[0] for line in verdicts(report, rounds)]
    assert lines == [
        "(3)/(7) = 0.50 (goal >= 0.50: met)",
        "(3)/(1) = 0.30 (no goal (a cheaper request than (3)'s))",
        "(3)/(4) = 15.00 (goal >= 10.00: met)",
        "(3@128)/(7@128) = 0.60 (goal >= 0.50: met)",
        "(3@128)/(1@128) = 0.60 (no goal (a cheaper request than (3)'s))",
        "(2@256)/(1@256) = 0.40 (goal >= 0.33: met)",
    ]
