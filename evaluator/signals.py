"""SIGTERM ends a run the way Ctrl-C does: the driver raises Interrupted, its `finally` closes
every engine, and what finished stays on disk for --resume (SLURM sends SIGTERM at a time limit).

    with sigterm_raises():
        driver.run()
"""
from __future__ import annotations

import signal
from contextlib import contextmanager

from evaluator.errors import Interrupted


@contextmanager
def sigterm_raises():
    def handler(signum, frame):
        raise Interrupted(f"stopped by signal {signum}")
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:      # not the main thread (tests): leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
