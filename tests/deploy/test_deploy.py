"""Bundles and versions: reproducible archives, content addressing, version numbering, loading
two versions of one app in one process, and the config file's place in the precedence."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import orjson
import pytest

from sluice.config import Settings, read_config_file
from sluice.deploy import Deployments, build_bundle, unpack_bundle
from sluice.deploy.loader import forget_bundles, load_version
from sluice.errors import ValidationError
from sluice.state import open_state

APP = """
import sluice
from helpers import greeting

app = sluice.App("{name}")


@app.function()
def hello(event, context):
    return {{"greeting": greeting()}}
"""


def write_source(root: Path, name: str = "shop", greeting: str = "hi") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "helpers.py").write_text(f"def greeting():\n    return {greeting!r}\n")
    (root / "app.py").write_text(APP.format(name=name))
    return root / "app.py"


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def with_store(path: Path, work):  # type: ignore[no-untyped-def]
    state = open_state(str(path))
    await state.start()
    try:
        return await work(Deployments(state))
    finally:
        await state.close()


def test_the_same_files_give_the_same_bytes_wherever_and_whenever(tmp_path: Path) -> None:
    first = write_source(tmp_path / "a")
    second = write_source(tmp_path / "b")
    os.utime(second, (1, 1))  # times are not part of the bundle
    (tmp_path / "b" / "__pycache__").mkdir()
    (tmp_path / "b" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "b" / ".env").write_text("SECRET=1")
    one, two = build_bundle(str(first), "app"), build_bundle(str(second), "app")
    assert one.data == two.data
    assert one.files == two.files == ("app.py", "helpers.py")
    assert one.entry == "app.py" and one.attr == "app"
    changed = write_source(tmp_path / "c", greeting="hello")
    assert build_bundle(str(changed), "app").data != one.data


def test_a_package_app_keeps_its_package_path(tmp_path: Path) -> None:
    package = tmp_path / "proj" / "shop"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "app.py").write_text('import sluice\napp = sluice.App("shop")\n')
    bundle = build_bundle(str(package / "app.py"), "app")
    assert bundle.entry == "shop/app.py"
    assert bundle.files == ("shop/__init__.py", "shop/app.py")


def test_unpack_refuses_paths_that_leave_the_directory(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../evil.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValidationError, match="not a plain relative file"):
        unpack_bundle(buffer.getvalue(), tmp_path / "out")
    assert not (tmp_path / "evil.py").exists()


def test_deploying_twice_makes_versions_1_and_2_of_one_blob(tmp_path: Path) -> None:
    source = write_source(tmp_path / "src")

    async def work(d: Deployments):  # type: ignore[no-untyped-def]
        v1 = await d.deploy("shop", build_bundle(str(source), "app"))
        v2 = await d.deploy("shop", build_bundle(str(source), "app"))
        write_source(tmp_path / "src", greeting="hello")
        v3 = await d.deploy("shop", build_bundle(str(source), "app"))
        return v1, v2, v3, await d.latest("shop"), await d.versions("shop")

    v1, v2, v3, latest, listed = run(with_store(tmp_path / "state.db", work))
    assert (v1.version, v2.version, v3.version) == (1, 2, 3)
    assert v1.digest == v2.digest != v3.digest
    assert latest == v3
    assert [v.version for v in listed] == [1, 2, 3]


def test_two_versions_load_one_after_the_other_in_one_process(tmp_path: Path) -> None:
    source = write_source(tmp_path / "src", name="loadtwice")
    cache = tmp_path / "bundles"

    async def deploy_and_fetch(d: Deployments):  # type: ignore[no-untyped-def]
        info = await d.deploy("loadtwice", build_bundle(str(source), "app"))
        return info, await d.fetch(info, cache)

    try:
        info1, dir1 = run(with_store(tmp_path / "state.db", deploy_and_fetch))
        app1, src1 = load_version(info1, dir1, cache)
        write_source(tmp_path / "src", name="loadtwice", greeting="hello")
        info2, dir2 = run(with_store(tmp_path / "state.db", deploy_and_fetch))
        app2, src2 = load_version(info2, dir2, cache)
        # Each version imported its own files (helpers included), not the cached modules.
        assert app1.functions["hello"].handler(None, None) == {"greeting": "hi"}
        assert app2.functions["hello"].handler(None, None) == {"greeting": "hello"}
        assert src1.ref != src2.ref and dir1.name == info1.digest
    finally:
        forget_bundles(cache)


def test_the_cli_deploys_and_lists_versions(tmp_path: Path) -> None:
    source = write_source(tmp_path / "src", name="clishop")
    env = {**os.environ, "SLUICE_STATE": f"sqlite:///{tmp_path / 'state.db'}"}

    def sluice(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "sluice.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = orjson.loads(sluice("deploy", str(source), "--json"))
    second = orjson.loads(sluice("deploy", str(source), "--json"))
    assert (first["version"], second["version"]) == (1, 2)
    assert first["digest"] == second["digest"]
    listed = orjson.loads(sluice("versions", "clishop", "--json"))
    assert [v["version"] for v in listed] == [1, 2]


def test_flags_beat_the_environment_which_beats_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text('broker = "redis://file:6379"\nstate = "sqlite:///f.db"\nport = 9000\n')
    monkeypatch.setenv("SLUICE_BROKER", "redis://env:6379")
    monkeypatch.delenv("SLUICE_STATE", raising=False)
    settings = Settings.from_env(read_config_file(config), port=9100)
    assert settings.broker_url == "redis://env:6379"  # env over file
    assert settings.state_url == "sqlite:///f.db"  # file over default
    assert settings.port == 9100  # flag over file


def test_a_config_file_with_an_unknown_or_mistyped_setting_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text('brokr = "redis://x"\n')
    with pytest.raises(ValidationError, match="unknown settings"):
        read_config_file(config)
    config.write_text('port = "80"\n')
    with pytest.raises(ValidationError, match="port must be an integer"):
        read_config_file(config)


QUEUE_APP = """
import sluice

app = sluice.App("queued")
app.queue("orders")
app.add_route("POST /orders", "queue:orders")
"""


def test_a_followers_gateway_commits_queue_sends_in_a_send_process(tmp_path: Path) -> None:
    """`sluice gateway --app-name`: the deployed version's embedded broker is opened as a
    gateway's (its standard-queue sends committed by a send process), and a POST to its queue
    route is stored before its 202."""
    from sluice.deploy.follower import Follower
    from sluice.platform import Roles
    from tests.gateway.harness import raw

    source = tmp_path / "src" / "app.py"
    source.parent.mkdir()
    source.write_text(QUEUE_APP)
    settings = Settings(data_dir=tmp_path / "data", port=0)

    async def main() -> None:
        await with_store(
            settings.state_path,
            lambda d: d.deploy("queued", build_bundle(str(source), "app")),
        )
        follower = Follower(settings, "queued", Roles(dispatch=False, http=True))
        try:
            assert await follower.start()
            assert follower.current is not None
            broker = follower.current.platform.broker
            assert broker._send_process is not None and broker._send_process.running
            request = (
                b"POST /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Length: 5\r\n\r\nhello"
            )
            assert follower.port is not None
            answer = await asyncio.to_thread(raw, follower.port, request)
            assert answer.startswith(b"HTTP/1.1 202"), answer
            [message] = await broker.receive("orders", 10)
            assert message.body == "hello"
        finally:
            await follower.close()
            forget_bundles(settings.data_dir / "bundles")

    run(main())
