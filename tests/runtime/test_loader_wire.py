"""Loading apps by reference, and the frame format."""

from __future__ import annotations

import io
import socket
import threading

import pytest

from sluice.app import App
from sluice.runtime import wire
from sluice.runtime.loader import AppLoadError, load_app
from sluice.runtime.pool import Runtime
from tests.runtime.conftest import APPS


def test_load_by_file_path_names_the_module_from_its_package() -> None:
    app, source = load_app(str(APPS / "basic.py"))
    assert isinstance(app, App) and app.name == "runtime-basic"
    assert source.module == "basic" and source.attr == "app"
    again, _ = load_app(source.ref)
    assert again is app


def test_load_by_module_reference() -> None:
    app, source = load_app("tests.runtime.apps.basic:app")
    assert app.name == "runtime-basic"
    assert source.ref == "tests.runtime.apps.basic:app"
    default, _ = load_app("tests.runtime.apps.basic")
    assert default is app


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (str(APPS / "two_apps.py"), "several Apps (first, second)"),
        (str(APPS / "no_app.py"), "no sluice.App"),
        (str(APPS / "missing.py"), "does not exist"),
        ("tests.runtime.apps.basic:nothing", "is not a sluice.App"),
        (str(APPS / "broken.py"), "Unable to import module 'broken'"),
        ("not a module", "neither a .py file nor a module path"),
    ],
)
def test_bad_references_say_what_is_wrong(ref: str, message: str) -> None:
    with pytest.raises(AppLoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_app(ref)


def test_runtime_start_fails_clearly_when_the_template_cannot_import(run) -> None:
    app = App("x")
    runtime = Runtime(str(APPS / "broken.py"), app.functions)
    with pytest.raises(AppLoadError, match="sluice_module_that_does_not_exist"):
        run(runtime.start())
    run(runtime.close())


def test_frames_round_trip_through_a_socket_and_a_buffer() -> None:
    a, b = socket.socketpair()
    with a, b:
        body = bytes(range(256)) * 4000  # more than a socket buffer holds: written in parts
        writer = threading.Thread(target=lambda: wire.write(a, {"op": "x", "n": 1}, body))
        writer.start()
        reader = b.makefile("rb")
        assert wire.read(reader) == ({"op": "x", "n": 1}, body)
        writer.join()
        wire.write(a, {"op": "y"})
        assert wire.read(reader) == ({"op": "y"}, b"")
        a.shutdown(socket.SHUT_WR)
        assert wire.read(reader) is None
    frames = wire.encode({"a": 1}, b"one") + wire.encode({"b": 2}, b"two")
    buffer = wire.FrameBuffer()
    got = [f for i in range(len(frames)) for f in buffer.feed(frames[i : i + 1])]
    assert got == [({"a": 1}, b"one"), ({"b": 2}, b"two")]


def test_truncated_and_oversized_frames_are_errors() -> None:
    frame = wire.encode({"a": 1}, b"body")
    with pytest.raises(wire.WireError):
        wire.read(io.BytesIO(frame[:-1]))
    with pytest.raises(wire.WireError):
        wire.read(io.BytesIO(frame[:3]))
    with pytest.raises(wire.WireError):
        list(wire.FrameBuffer().feed(wire.PREFIX.pack(wire.MAX_FRAME, 1)))
