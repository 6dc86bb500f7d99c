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

LEVEL_KINDS = ("concurrency", "rate")


@dataclass(frozen=True)
class ChatRequest:
    """One request of a level; the index survives routing, retries and the out-of-order finish."""
    index: int
    messages: tuple[dict, ...]        # chat messages, {"role": ..., "content": ...}
    seed: int | None = None           # sent as the request's `seed` only when set


@dataclass(frozen=True)
class Level:
    """How hard to push: N requests in flight, or Poisson arrivals at R requests/s (inf: all at once)."""
    kind: str                         # "concurrency" | "rate"
    value: float                      # N in flight, or requests/s; inf = all at once

    def __post_init__(self) -> None:
        if self.kind not in LEVEL_KINDS:
            raise ValueError(f"Level kind must be one of {LEVEL_KINDS}, got {self.kind!r}")
        if self.kind == "concurrency" and not (self.value >= 1 and (math.isinf(self.value) or self.value == int(self.value))):
            raise ValueError(f"concurrency must be a whole number >= 1 (or inf), got {self.value!r}")
        if self.kind == "rate" and not self.value > 0:
            raise ValueError(f"rate must be > 0 requests/s (inf: all at once), got {self.value!r}")

    @property
    def label(self) -> str:
        """'c=16', 'rate=8/s', 'rate=0.5/s', 'rate=inf'; Level.from_label reads it back exactly."""
        # repr, not :g, for fractional rates: the label names the level in results and must not round
        if math.isinf(self.value):
            number = "inf"
        else:
            number = str(int(self.value)) if self.value == int(self.value) else repr(self.value)
        if self.kind == "concurrency":
            return f"c={number}"
        return "rate=inf" if number == "inf" else f"rate={number}/s"

    @classmethod
    def from_label(cls, label: str) -> "Level":
        """The Level whose label this is: 'c=16' -> Level('concurrency', 16.0)."""
        if label.startswith("c="):
            return cls("concurrency", float(label[2:]))
        if label.startswith("rate="):
            return cls("rate", float(label[5:].removesuffix("/s")))
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
    rejected: bool                    # server refused it as invalid (HTTP 4xx): bad input, never retried
    retries: int
    sent_s: float                     # first send, seconds from level start
    ttft_s: float | None              # first send -> first content token
    itl_s: tuple[float, ...]          # gaps between successive content chunks of the final attempt
    e2e_s: float | None               # first send -> last byte
    prompt_tokens: int                # from the server's `usage`, never counted from chunks
    completion_tokens: int            # idem; 0 when the stream had no usage (then ok is False)
    text: str

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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RequestResult":
        d = dict(d)
        d["itl_s"] = tuple(d["itl_s"])
        return cls(**d)
