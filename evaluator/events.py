"""What a driver tells its listener (the progress display, the benchmark's clock, tests) while a
run goes: one frozen dataclass per event, so a listener relies on fields the type checker knows,
not on strings both sides must spell alike.

    python -m evaluator ...   # evaluator.progress.RunProgress listens to these
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union


@dataclass(frozen=True)
class ReplicaStarting:
    rank: int


@dataclass(frozen=True)
class ReplicaReady:
    rank: int
    startup_s: float
    devices: str
    compile: str                      # cold | warm | none | unknown


@dataclass(frozen=True)
class GenerationStarted:
    planned: dict[int, int]           # rank -> prompts planned for it


@dataclass(frozen=True)
class ChunkDone:
    rank: int
    prompts: int
    completion_tokens: int


@dataclass(frozen=True)
class ReplicaFailed:
    rank: int
    reason: str
    requeued: int                     # prompts (or requests) given to the others


@dataclass(frozen=True)
class LevelStarted:
    label: str                        # "c=16", "rate=8/s"
    position: int                     # 1-based
    levels: int
    requests: int


@dataclass(frozen=True)
class RequestDone:
    rank: int
    ok: bool


@dataclass(frozen=True)
class LevelDone:
    label: str
    summary: str                      # one line: req/s, tok/s, p50 TTFT/TPOT


@dataclass(frozen=True)
class Warning:
    message: str


@dataclass(frozen=True)
class EnginesClosed:
    """Every engine is down; what follows (merge, score, store) is the driver's own work."""


Event = Union[ReplicaStarting, ReplicaReady, GenerationStarted, ChunkDone, ReplicaFailed, LevelStarted,
              RequestDone, LevelDone, Warning, EnginesClosed]
Listener = Callable[[Event], None]


def ignore(event: Event) -> None:
    pass
