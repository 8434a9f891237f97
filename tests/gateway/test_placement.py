"""CPU placement: with "dedicated", a gateway's event loop keeps one CPU and what it starts (the
runtime's template and its environments, the SQLite send process) runs on the others."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
import pytest

from sluice.config import Settings, read_config_file
from sluice.errors import ValidationError
from sluice.placement import Placement, place
from sluice.platform import Platform, Roles
from sluice.runtime.loader import load_app

APP = str(Path(__file__).parent / "apps" / "runtime_app.py")


def test_shared_places_nothing_and_dedicated_keeps_the_first_cpu_for_the_loop():
    assert Placement.plan("shared", [0, 1, 2, 3]) is None
    assert Placement.plan("dedicated", [3, 1, 2]) == Placement(frozenset({1}), frozenset({2, 3}))


def test_dedicated_on_one_cpu_places_nothing():
    assert Placement.plan("dedicated", [5]) is None


def test_an_unknown_placement_is_refused():
    with pytest.raises(ValidationError, match="cpu placement"):
        Placement.plan("pinned", [0, 1])


def test_placing_a_process_that_exited_or_no_cpus_is_harmless():
    place(os.getpid(), None)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    place(pid, {0})  # reaped: no such process


def test_the_placement_comes_from_the_environment_and_the_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_CPU_PLACEMENT", "dedicated")
    assert Settings.from_env().cpu_placement == "dedicated"
    monkeypatch.delenv("SLUICE_CPU_PLACEMENT")
    config = tmp_path / "sluice.toml"
    config.write_text('cpu_placement = "dedicated"\n')
    assert Settings.from_env(read_config_file(config)).cpu_placement == "dedicated"
    assert Settings().cpu_placement == "shared"


def _cpus(pid: int) -> set[int]:
    return set(os.sched_getaffinity(pid))


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="a dedicated placement needs two CPUs or more"
)
def test_a_dedicated_gateway_loop_keeps_one_cpu_and_its_children_get_the_others(tmp_path):
    before = _cpus(0)
    first, others = min(before), before - {min(before)}

    async def main() -> None:
        app, source = load_app(APP)
        settings = Settings(data_dir=tmp_path / "data", port=0, cpu_placement="dedicated")
        platform = Platform(app, source.ref, settings)
        await platform.start(Roles(dispatch=False, http=True))
        try:
            assert _cpus(0) == {first}  # this thread runs the loop
            send_process = platform.broker._send_process
            assert send_process is not None and send_process._transport is not None
            assert _cpus(send_process._transport.get_pid()) == others
            event = {"pathParameters": {"name": "cpu"}}
            result = await platform.runtime.invoke("hello", orjson.dumps(event))
            assert result.function_error is None, result.payload
            environments = [env.pid for env in platform.runtime._by_pid.values()]
            assert environments and all(_cpus(pid) == others for pid in environments)
        finally:
            await platform.close()

    try:
        asyncio.run(main())
    finally:
        os.sched_setaffinity(0, before)  # the test runner's thread: as it was
