"""Split the prompt list into work chunks for the replicas, every prompt exactly once.

contiguous: rank r gets [r*q + min(r, rem), ...) with q, rem = divmod(n, dp): the sizes differ by
    at most one (1319 over 2 = 660 + 659), and each replica's prompts stay in order.
balanced:   contiguous ranges cut where the estimated work (prompt tokens) is even, so a replica
    with long prompts gets fewer of them.
dynamic:    small chunks in one shared queue; whichever replica is free takes the next, so a slow
    replica ends up doing less.

    python -c "from evaluator.sharding import contiguous_bounds; print(contiguous_bounds(1319, 2))"
"""
from __future__ import annotations

from dataclasses import dataclass

from evaluator.records import Prompt

SHARDING_MODES = ("contiguous", "balanced", "dynamic")


@dataclass(frozen=True)
class Chunk:
    """A unit of work. owner is the replica rank it is meant for, or None for the shared queue."""
    chunk_id: int
    owner: int | None
    prompts: tuple[Prompt, ...]

    @property
    def indices(self) -> list[int]:
        return [p.index for p in self.prompts]


def contiguous_bounds(n: int, dp: int) -> list[tuple[int, int]]:
    """[(start, stop)] per rank; sizes differ by at most one and cover range(n) exactly."""
    q, rem = divmod(n, dp)
    bounds = []
    for rank in range(dp):
        start = rank * q + min(rank, rem)
        bounds.append((start, start + q + (1 if rank < rem else 0)))
    return bounds


def balanced_bounds(weights: list[int], dp: int) -> list[tuple[int, int]]:
    """Contiguous ranges whose weight sums are as even as contiguous cuts allow.

    Cut r goes where the running total is closest to (r+1)/dp of the whole; when there are at
    least dp prompts every rank gets at least one."""
    n = len(weights)
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + max(w, 1))
    bounds, start = [], 0
    for rank in range(dp - 1):
        target = prefix[-1] * (rank + 1) / dp
        if n >= dp:
            lo, hi = start + 1, n - (dp - rank - 1)
        else:
            lo, hi = start, n
        stop = min(range(lo, hi + 1), key=lambda s: abs(prefix[s] - target))
        bounds.append((start, stop))
        start = stop
    bounds.append((start, n))
    return bounds


def _split(prompts: list[Prompt], owner: int | None, chunk_size: int, first_id: int) -> list[Chunk]:
    return [Chunk(first_id + i, owner, tuple(prompts[s:s + chunk_size]))
            for i, s in enumerate(range(0, len(prompts), chunk_size))]


def default_chunk_size(n: int, dp: int, mode: str) -> int:
    """Static modes: one chunk per replica, so each engine batches its whole shard in one
    generate call exactly as the bare engine would. Dynamic: about 8 chunks per replica, small
    enough to rebalance, large enough to keep the engine's batch full."""
    if mode == "dynamic":
        return max(1, -(-n // (dp * 8)))
    return max(1, -(-n // dp))


def make_chunks(prompts: list[Prompt], dp: int, mode: str = "contiguous",
                chunk_size: int | None = None) -> list[Chunk]:
    """All chunks of a run, in index order. Prompts must be sorted by index."""
    if mode not in SHARDING_MODES:
        raise ValueError(f"unknown sharding {mode!r}; choose from {', '.join(SHARDING_MODES)}")
    size = chunk_size or default_chunk_size(len(prompts), dp, mode)
    if mode == "dynamic":
        return _split(prompts, None, size, 0)
    if mode == "balanced":
        bounds = balanced_bounds([p.prompt_tokens for p in prompts], dp)
    else:
        bounds = contiguous_bounds(len(prompts), dp)
    chunks: list[Chunk] = []
    for rank, (start, stop) in enumerate(bounds):
        chunks += _split(prompts[start:stop], rank, size, len(chunks))
    return chunks
