"""Handlers that misbehave: hang, spawn, hog memory, exit, sleep."""

import os
import subprocess
import sys
import time

import sluice

app = sluice.App("runtime-faulty")


@app.function(timeout=1)
def spin(event, context):
    print("spinning in", os.getpid(), flush=True)
    while True:
        pass


@app.function(timeout=1)
def spawn(event, context):
    """Starts a child that would outlive the invocation, then hangs past the timeout."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(event["pidfile"], "w") as f:
        f.write(str(child.pid))
    time.sleep(30)


@app.function(memory=128, timeout=10)
def hog(event, context):
    blocks = []
    for _ in range(300):
        blocks.append(b"x" * (1 << 20))  # touched pages: RSS really grows
    return len(blocks)


@app.function
def exit3(event, context):
    print("about to exit", flush=True)
    os._exit(3)


@app.function
def pid(event, context):
    return os.getpid()


@app.function(timeout=5, reserved_concurrency=2)
def limited(event, context):
    time.sleep(event.get("sleep", 0.3))
    return os.getpid()


@app.function(idle_timeout=0.3)
def short_lived(event, context):
    return os.getpid()


@app.function(provisioned=2)
def warm(event, context):
    return os.getpid()


@app.function
def scribble(event, context):
    """Writes a bogus answer header into every write-only pipe it holds (its answer pipe among
    them), as a handler with a stray file descriptor could."""
    import stat
    from pathlib import Path

    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
            flags = Path(f"/proc/self/fdinfo/{fd}").read_text().split("flags:")[1].split()[0]
        except (OSError, IndexError):
            continue
        if pipe and int(flags, 8) & os.O_ACCMODE == os.O_WRONLY:
            os.write(fd, b"\xff" * 64)
    return "written"


@app.function(timeout=5)
def moody(event, context):
    """Sleeps, then exits or answers its pid, as the event says."""
    time.sleep(event.get("sleep", 0))
    if event.get("exit"):
        os._exit(4)
    return os.getpid()
