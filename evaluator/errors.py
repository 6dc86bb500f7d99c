"""The errors a run ends with, and the exit code each one means to a user:

UsageError    bad input (flags, files, settings an engine refuses): one line, exit code 2,
              raised before any engine starts where it can be known then
RunFailed     the run could not finish (every replica died, a collect error): exit code 1, what
              finished is kept for --resume
Interrupted   SIGTERM or Ctrl-C: every engine shut down, exit code 130, resumable

    python -m evaluator --mode dp --gpus 64   # UsageError: exit 2
"""
from __future__ import annotations


class UsageError(ValueError):
    """Bad input: printed as one line, exit code 2; results already written are untouched."""


class RunFailed(RuntimeError):
    """The run stopped; what finished is kept in partial.jsonl for --resume."""


class Interrupted(RuntimeError):
    """SIGTERM (or SIGINT) arrived: shut every engine down, keep what finished."""
