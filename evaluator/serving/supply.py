"""Where each load level's requests come from: requests the servers have not seen before.

Within a run, no level or capacity probe sends a request the server has already answered (a
re-sent prompt is served from the prefix cache and measures the cache, not the layout), unless the
traffic itself repeats (shared prefixes, sessions) or the user allows it (--reuse-requests: the
levels that re-send are marked). Two kinds of source:

- a pool (GSM8K prompts, a request file): each level takes the next unused requests in order (a
  session whole); the planned levels' counts are reserved up front, so a level that stays on to
  reach its minimum duration takes only what no later level needs, and a plan that needs more
  than the pool holds is refused before any engine starts;
- a synthetic shape: an endless stream; each level draws its requests afresh from a stream seeded
  by its label (so the probe at 16 req/s of one layout sends the same requests as that of another).

A warm-up (untimed, before the first measured level on each server) sends prompts made for it
(random tokens of the traffic's typical length with the chat template), never any level's.

    python -c "from evaluator.serving.supply import planned_count; print(planned_count('8x', 16, 1319, False))"
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

from evaluator.serving.records import ChatRequest, Level

MIN_PROBE_REQUESTS = 20       # a capacity probe's percentile of fewer says little
WARMUP_OUTPUT_TOKENS = 32     # enough decode steps to reach every kernel a level will use


def planned_count(spec: str, value: float, available: int, capacity: bool) -> int:
    """Requests a level plans to send: all (the traffic's size), N, or N x the level's value
    (inf: all); a capacity probe at least MIN_PROBE_REQUESTS. The pool's size caps it."""
    if spec == "all" or (spec.endswith("x") and math.isinf(value)):
        n = available
    elif spec.endswith("x"):
        n = int(spec[:-1]) * math.ceil(value)
    else:
        n = int(spec)
    if capacity:
        n = max(n, MIN_PROBE_REQUESTS)
    return max(1, min(n, available))


class PoolExhausted(Exception):
    """The traffic has no fresh request left for a level (and re-sending is not allowed)."""


@dataclass(frozen=True)
class Unit:
    """What a level takes whole: one request, or every turn of one session."""
    requests: tuple[ChatRequest, ...]

    @property
    def size(self) -> int:
        return len(self.requests)


def units_of(requests: list[ChatRequest]) -> list[Unit]:
    """Requests grouped into units in order of their first appearance (a session at its first turn)."""
    out, sessions = [], {}
    for r in requests:
        if r.session is None:
            out.append([r])
        elif r.session in sessions:
            sessions[r.session].append(r)
        else:
            sessions[r.session] = [r]
            out.append(sessions[r.session])
    return [Unit(tuple(u)) for u in out]


class Pool:
    """A finite traffic (GSM8K prompts, a request file) handed out in order, each unit once; with
    reuse, once every unit was sent, from the start again, those requests marked reused."""

    def __init__(self, requests: list[ChatRequest], reuse: bool = False):
        self.units = units_of(requests)
        self.size = sum(u.size for u in self.units)
        self.reuse = reuse
        self.used: set[int] = set()          # unit positions already sent
        self.rounds = 0                      # times the pool was handed out whole (reuse)
        self.reserved = 0                    # requests later levels are promised

    @property
    def remaining(self) -> int:
        return sum(u.size for k, u in enumerate(self.units) if k not in self.used)

    def mark_sent(self, indices: set[int]) -> None:
        """Units whose requests an earlier attempt sent (a resumed run) are not fresh any more."""
        for k, u in enumerate(self.units):
            if any(r.index in indices for r in u.requests):
                self.used.add(k)

    def _next(self, taken: set[int]) -> tuple[int, bool] | None:
        for k in range(len(self.units)):
            if k not in self.used and k not in taken:
                return k, False
        if not self.reuse:
            return None
        for k in range(len(self.units)):          # every unit sent once: start over, marked
            if k not in taken:
                return k, True
        return None

    def take(self, n: int) -> list[ChatRequest]:
        """At least n requests (whole sessions), fresh first; fewer only when the pool cannot
        give more (no fresh one left and no reuse, or a level as large as the pool)."""
        out, taken = [], set()
        while sum(len(out_u) for out_u in out) < n:
            found = self._next(taken)
            if found is None:
                break
            k, again = found
            taken.add(k)
            self.used.add(k)
            out.append([replace(r, reused=True) for r in self.units[k].requests] if again
                       else list(self.units[k].requests))
        return [r for unit in out for r in unit]

    def spare(self, taken_in_level: set[int]) -> list[ChatRequest]:
        """One more fresh unit for a level that stays on to reach its minimum duration, only
        from what no later level was promised; [] when there is none."""
        if self.remaining - self.reserved <= 0:
            return []
        for k, u in enumerate(self.units):
            if k not in self.used and not any(r.index in taken_in_level for r in u.requests):
                self.used.add(k)
                return list(u.requests)
        return []


@dataclass(frozen=True)
class PlanProblem:
    """Why the planned levels cannot all get fresh requests."""
    needed: int
    available: int
    per_level: tuple[tuple[str, int], ...]

    def message(self, what: str) -> str:
        parts = ", ".join(f"{label}: {n}" for label, n in self.per_level)
        return (f"the load levels need {self.needed:,} fresh requests ({parts}) and {what} has {self.available:,}: "
                f"lower --level-prompts, give fewer levels or more traffic, or let levels re-send requests the "
                f"servers have answered already with --reuse-requests (those levels are marked, and their prefix "
                f"cache hits are not the traffic's)")


def level_planned(spec: str, level: Level, available: int, capacity: bool) -> int:
    """planned_count for a level; a replay level sends the whole trace."""
    return available if level.kind == "replay" else planned_count(spec, level.value, available, capacity)


def check_plan(levels: list[Level], spec: str, available: int, reuse: bool) -> PlanProblem | None:
    """Fixed levels on a finite pool: do they fit without re-sending?"""
    # what each level asks for, before the pool's size caps it ("all" and a replay are the pool)
    def wanted(lv: Level) -> int:
        whole = spec == "all" or math.isinf(lv.value) or lv.kind == "replay"
        return level_planned(spec, lv, available if whole else 10**12, False)
    per = tuple((lv.label, wanted(lv)) for lv in levels)
    needed = sum(n for _, n in per)
    if reuse or needed <= available:
        return None
    return PlanProblem(needed, available, per)


def capacity_need(spec: str, start: float, budget: int, available: int) -> int:
    """The most fresh requests a capacity search can ask for: every probe holding, so the rate
    doubles each time (a bisection's rates are lower)."""
    return sum(planned_count(spec, start * 2 ** k, available, True) for k in range(budget))


Fits = Callable[[list[dict], int], "int | None"]
