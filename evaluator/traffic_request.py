"""One request of the user's traffic, and the error for traffic that cannot be used: shared by
evaluator.traffic (files, load_traffic) and evaluator.traffic_synthetic (drawn shapes)."""
from __future__ import annotations

from dataclasses import dataclass


class TrafficError(ValueError):
    """Traffic that cannot be used: one line naming the file and line (or the request) where it can."""


@dataclass(frozen=True)
class TrafficRequest:
    """One request to send. For turn 0, messages is the conversation's start (e.g. a system and a
    user message); for a later turn, only that turn's new message(s): the client appends them to
    the conversation so far, the answers it received included.

    prompt_tokens is the chat template (generation prompt added) over the session's messages up
    to and including this turn's, tokenised as the server does. The assistant's answers of
    earlier turns are generated live and cannot be known here, so for turn > 0 they are left out:
    the count is a lower bound of what the server will see."""
    index: int                        # 0-based, file order
    messages: tuple[dict, ...]        # chat messages of this turn, {"role": ..., "content": ...}
    prompt_tokens: int
    max_tokens: int | None = None     # this request's output length; None = the run's --max-tokens
    timestamp_s: float | None = None  # arrival, seconds from the start of the trace
    session: str | None = None
    turn: int = 0                     # 0: a session's first turn, or a request without session
