"""Diagnostic only: a send process that answers every send as stored and stores nothing.

`gateway_profile.py` runs it in place of `sluice.broker.send_process` to measure what handing
sends to a child process and reading its answers costs the gateway's event loop, apart from what
committing them costs: same pipes, same frames, same answers, no database.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from sluice.broker.send_process import READ_SIZE, _frame, _frames


def _ids(frame: list[Any]) -> list[list[str]]:
    """Every send of a frame as stored, each message with the same made-up id."""
    _, queues = frame
    return [["echo"] * len(messages) for _, sends in queues for messages in sends]


def main() -> None:
    out = os.dup(1)
    os.dup2(2, 1)
    os.write(out, _frame(b""))  # "the database is open"
    buffer = bytearray()
    while data := os.read(0, READ_SIZE):
        buffer += data
        frames = _frames(buffer)
        if frames:
            answers = (_frame(orjson.dumps(_ids(orjson.loads(f)))) for f in frames)
            os.write(out, b"".join(answers))


if __name__ == "__main__":
    main()  # its arguments (the database, the pragmas) are not used
