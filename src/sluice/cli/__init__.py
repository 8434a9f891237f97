"""The `sluice` command line: run an app, invoke functions, work with queues, show status.

One module per group of commands; importing them registers their commands on `main`.
"""

from sluice.cli import control, invoke, queue, run
from sluice.cli.common import main

__all__ = ["control", "invoke", "main", "queue", "run"]
