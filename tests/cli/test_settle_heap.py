"""`settle_heap`, run by the serving commands once started and by a follower after each version
switch, in a process of its own (it changes the collector of the whole process: not pytest's)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import gc, weakref
from sluice.platform import GC_YOUNG_THRESHOLD, settle_heap

class Node:
    pass

# A stand-in for what a version's startup leaves behind, cyclic as modules and classes are.
version = Node()
version.self = version
old_version = weakref.ref(version)
settle_heap()
assert gc.get_freeze_count() > 0, "startup objects were not frozen"
assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD, gc.get_threshold()
tracked_after_freeze = len(gc.get_objects())

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

# A version replaced by another: once dropped, the next settle_heap thaws and collects it.
del version
settle_heap()
assert old_version() is None, "a replaced version's frozen objects were kept"
assert gc.get_freeze_count() > 0
print("ok")
"""


def test_startup_objects_are_frozen_and_garbage_is_still_collected() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
