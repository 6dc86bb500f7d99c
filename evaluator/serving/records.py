"""Frozen records of the serving load client: one chat request to send (ChatRequest), one load
level to send it at (Level) and what came back for one request (RequestResult). Sampling settings
are evaluator.records.SamplingConfig, shared with the offline runs. Units are in the names.

    python -c "from evaluator.serving.records import Level; print(Level('rate', 8).label)"
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

LEVEL_KINDS = ("concurrency", "rate", "replay")


@dataclass(frozen=True)
class ChatRequest:
    """One request of a level; the index survives routing, retries and the out-of-order finish.

    A request of a session (a multi-turn conversation) carries only its own turn's messages: the
    client sends turn k after turn k-1's answer came back, with the whole conversation so far
    (earlier turns' messages and the answers the server gave) before them."""
    index: int
    messages: tuple[dict, ...]        # chat messages, {"role": ..., "content": ...}
    seed: int | None = None           # sent as the request's `seed` only when set
    max_tokens: int | None = None     # this request's own output length (None: the run's --max-tokens)
    ignore_eos: bool | None = None    # None: the run's --ignore-eos
    session: str | None = None
    turn: int = 0
    at_s: float | None = None         # replay: arrival, seconds from the trace's start (before scaling)
    prompt_tokens: int | None = None  # what the server's usage must say (None: not known here, e.g. a
    #                                   later turn, whose prompt carries answers generated live)
    reused: bool = False              # an earlier level of this run sent it already (--reuse-requests)


@dataclass(frozen=True)
class Level:
    """How hard to push: N requests in flight, Poisson arrivals at R requests/s (inf: all at once),
    or a trace's own arrival times replayed at S times their speed (replay=2x: twice as fast).
    repeat > 0: the same load again with fresh requests (a capacity probe repeated at the boundary)."""
    kind: str                         # "concurrency" | "rate" | "replay"
    value: float                      # N in flight, requests/s (inf = all at once), or the replay speed
    repeat: int = 0

    def __post_init__(self) -> None:
        if self.kind not in LEVEL_KINDS:
            raise ValueError(f"Level kind must be one of {LEVEL_KINDS}, got {self.kind!r}")
        if self.kind == "concurrency" and not (self.value >= 1 and (math.isinf(self.value) or self.value == int(self.value))):
            raise ValueError(f"concurrency must be a whole number >= 1 (or inf), got {self.value!r}")
        if self.kind == "rate" and not self.value > 0:
            raise ValueError(f"rate must be > 0 requests/s (inf: all at once), got {self.value!r}")
        if self.kind == "replay" and not (self.value > 0 and math.isfinite(self.value)):
            raise ValueError(f"replay speed must be a positive number, got {self.value!r}")
        if self.repeat < 0:
            raise ValueError(f"repeat must be 0 or more, got {self.repeat!r}")

    @property
    def label(self) -> str:
        """'c=16', 'rate=8/s', 'rate=0.5/s', 'rate=inf', 'rate=8/s #2' (the second run at 8/s);
        Level.from_label reads it back exactly."""
        return self.load_label + (f" #{self.repeat + 1}" if self.repeat else "")

    @property
    def load_label(self) -> str:
        """The load without the repeat: 'rate=8/s' for every run at 8/s."""
        # repr, not :g, for fractional rates: the label names the level in results and must not round
        if math.isinf(self.value):
            number = "inf"
        else:
            number = str(int(self.value)) if self.value == int(self.value) else repr(self.value)
        if self.kind == "concurrency":
            return f"c={number}"
        if self.kind == "replay":
            return f"replay={number}x"
        return "rate=inf" if number == "inf" else f"rate={number}/s"

    @classmethod
    def from_label(cls, label: str) -> "Level":
        """The Level whose label this is: 'c=16' -> Level('concurrency', 16.0)."""
        load, sep, nth = label.partition(" #")
        if sep:
            base = cls.from_label(load)
            if not nth.isdigit() or int(nth) < 2:
                raise ValueError(f"not a level label: {label!r}")
            return cls(base.kind, base.value, int(nth) - 1)
        if label.startswith("c="):
            return cls("concurrency", float(label[2:]))
        if label.startswith("rate="):
            return cls("rate", float(label[5:].removesuffix("/s")))
        if label.startswith("replay="):
            return cls("replay", float(label[7:].removesuffix("x")))
        raise ValueError(f"not a level label: {label!r}")


@dataclass(frozen=True)
class RequestResult:
    """One request's outcome. Times are seconds on the client's perf_counter, all measured from the
    FIRST send, so a retried request's ttft/e2e include the failed attempts the user waited through."""
    index: int
    level: str                        # Level.label
    replica: int                      # endpoint rank of the attempt that finished; -1: never sent
    ok: bool
    error: str | None
    rejected: bool                    # server refused it as invalid (HTTP 4xx but 408/429): bad input, never retried
    retries: int                      # attempts re-sent after a failure (a dead server, a cut stream)
    sent_s: float                     # first send, seconds from level start
    ttft_s: float | None              # first send -> first token of any kind (answer, reasoning, tool call)
    itl_s: tuple[float, ...]          # gaps between successive token chunks of the final attempt
    e2e_s: float | None               # first send -> last byte
    prompt_tokens: int                # from the server's `usage`, never counted from chunks
    completion_tokens: int            # idem; 0 when the stream had no usage (then ok is False)
    text: str                         # the answer (content deltas only)
    scheduled_s: float | None = None  # when it was due, seconds from level start (sent_s - scheduled_s: send lag)
    first_answer_s: float | None = None   # first send -> first answer (content) token; later than ttft_s
    #                                       for a reasoning model, which streams its reasoning first
    timed_out: bool = False           # no answer within the request timeout on a server that was still healthy
    throttled: int = 0                # times the server said 429/408 (overloaded, rate limited) and we backed off
    status: int | None = None         # the last HTTP status that failed it, when one did
    session: str | None = None
    turn: int = 0
    reasoning: str = ""               # reasoning deltas, kept apart from the answer
    ended_s: float | None = None      # when its result came back (answer, failure), seconds from level start
    reused: bool = False              # a request an earlier level of this run had sent already
    skipped: bool = False             # never sent: an earlier turn of its session failed, or the
    #                                   conversation outgrew the context (counted apart, not as late)

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first: (e2e - ttft) / (completion_tokens - 1)."""
        if self.completion_tokens <= 1 or self.e2e_s is None or self.ttft_s is None:
            return None
        return (self.e2e_s - self.ttft_s) / (self.completion_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["itl_s"] = list(self.itl_s)
        return d

    @property
    def send_lag_s(self) -> float | None:
        return None if self.scheduled_s is None else self.sent_s - self.scheduled_s

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RequestResult":
        """Reads what this version writes and what earlier ones wrote (without the later fields)."""
        d = dict(d)
        d["itl_s"] = tuple(d["itl_s"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"request record: unknown field(s) {', '.join(unknown)} (written by a newer version?)")
        return cls(**d)
