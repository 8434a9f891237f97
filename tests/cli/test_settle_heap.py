"""`settle_heap`, run by the serving commands once started, in a process of its own (it changes
the collector of the whole process: not in pytest's)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import gc, weakref
from sluice.cli.run import GC_YOUNG_THRESHOLD, settle_heap

startup = [object() for _ in range(10)]  # stand-in for what startup leaves behind
settle_heap()
assert gc.get_freeze_count() > 0, "startup objects were not frozen"
assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD, gc.get_threshold()
tracked_after_freeze = len(gc.get_objects())

class Node:
    pass

# Reference cycles made while serving are still collected, without anyone calling gc.collect().
first = Node()
first.self = first
witness = weakref.ref(first)
del first
for _ in range(3 * GC_YOUNG_THRESHOLD):
    node = Node()
    node.self = node
    del node
assert witness() is None, "a cycle survived three young thresholds"
assert len(gc.get_objects()) < tracked_after_freeze + GC_YOUNG_THRESHOLD + 100
print("ok")
"""


def test_startup_objects_are_frozen_and_cycles_are_still_collected() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
