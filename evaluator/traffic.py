"""The user's own traffic for serving runs: requests read from a JSONL file or a ShareGPT JSON
file, or synthetic requests of chosen lengths, each counted in prompt tokens the way the server
will count them (the model's chat template with the generation prompt added). Pure code: it reads
the traffic file and nothing else; no engine, no server.

Spec forms (load_traffic):
  requests.jsonl   one JSON object a line: messages (list of {role, content}) or prompt (a
                   string); optional output_tokens (alias max_tokens), timestamp (seconds from
                   the start, never going backwards) and session (turn k of a session is the
                   k-th line with that id)
  sharegpt.json    a list of {"conversations": [{"from": "human", "value": ...}, ...]}: the
                   first human message (a system message before it kept) is the prompt, the
                   token length of the gpt reply after it the output length
  synthetic:in=<dist>,out=<dist>[,n=100][,prefix=0][,prefixes=1][,seed=<int>]
                   <dist> = 200 | uniform(a,b) | normal(mean,sd) | lognormal(median,sigma),
                   each optionally followed by [lo:hi] (clipped; either side may be left empty);
                   drawn and built by evaluator/traffic_synthetic.py

    python -c "from evaluator.data import load_tokenizer; from evaluator.traffic import load_traffic; \
print(load_traffic('synthetic:n=8,in=uniform(100,300),out=50', load_tokenizer('models/tiny'), \
max_model_len=None, default_max_tokens=512).shape())"
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from evaluator.serving.metrics import percentile
from evaluator.traffic_request import TrafficError, TrafficRequest
from evaluator.traffic_synthetic import SyntheticTraffic

JSONL_FIELDS = ("messages", "prompt", "output_tokens", "max_tokens", "timestamp", "session")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "system": "system"}
ACCEPTED = ("a .jsonl file of requests, a .json file in ShareGPT format, or "
            "synthetic:in=<dist>,out=<dist>[,n=..][,prefix=..][,prefixes=..][,seed=..]")


@dataclass(frozen=True)
class Traffic:
    """A run's requests. fixed_output: every request fixes its output length, so the run sends
    ignore_eos and the server generates exactly that many tokens."""
    name: str                         # "requests.jsonl", "sharegpt.json", "synthetic in=2000 out=200"
    requests: tuple[TrafficRequest, ...]
    fixed_output: bool

    def __post_init__(self) -> None:
        if self.fixed_output != (bool(self.requests) and all(r.max_tokens is not None for r in self.requests)):
            raise ValueError(f"traffic {self.name}: fixed_output={self.fixed_output} contradicts its requests")

    @property
    def has_timestamps(self) -> bool:
        return any(r.timestamp_s is not None for r in self.requests)

    @property
    def has_sessions(self) -> bool:
        return any(r.session is not None for r in self.requests)

    def shape(self) -> dict[str, Any]:
        """Count, mean, p50 and p90 of prompt tokens and of max_tokens (None unless fixed_output)."""
        d: dict[str, Any] = {"requests": len(self.requests)}
        prompt = [r.prompt_tokens for r in self.requests]
        out = [r.max_tokens for r in self.requests] if self.fixed_output else []
        for key, values in (("prompt_tokens", prompt), ("max_tokens", out)):
            d[f"{key}_mean"] = sum(values) / len(values) if values else None
            d[f"{key}_p50"] = percentile(values, 50)
            d[f"{key}_p90"] = percentile(values, 90)
        return d


def load_traffic(spec: str, tokenizer, *, max_model_len: int | None, default_max_tokens: int,
                 seed: int = 0, limit: int | None = None) -> Traffic | SyntheticTraffic:
    """The traffic `spec` names (see the module docstring), its first `limit` requests only (files
    are read no further), every request checked: prompt_tokens + (max_tokens or
    default_max_tokens) must fit max_model_len when given. `seed` drives synthetic draws unless
    the spec sets its own; a synthetic shape is checked from its distributions and returned
    unbuilt (SyntheticTraffic: its prompts are made when a level needs them). Raises TrafficError,
    one line, for anything unusable."""
    if limit is not None and limit < 1:
        raise TrafficError(f"limit must be at least 1 request (got {limit})")
    if default_max_tokens < 1:
        raise TrafficError(f"max_tokens must be at least 1 (got {default_max_tokens})")
    if not getattr(tokenizer, "chat_template", None):
        raise TrafficError("the model's tokenizer has no chat template; prompt tokens cannot be counted as the server does")
    if spec.startswith("synthetic:"):
        traffic = SyntheticTraffic(spec, tokenizer, seed, limit)
        traffic.check(max_model_len)
        return traffic
    if spec.lower().endswith((".jsonl", ".json")):
        if not os.path.isfile(spec):
            raise TrafficError(f"traffic file not found: {spec}")
        name = os.path.basename(spec)
        items = _jsonl(spec, tokenizer, limit) if spec.lower().endswith(".jsonl") else _sharegpt(spec, tokenizer, limit)
    else:
        raise TrafficError(f"unknown traffic {spec!r}: expected {ACCEPTED}")
    for where, r in items:
        out = r.max_tokens or default_max_tokens
        if max_model_len is not None and r.prompt_tokens + out > max_model_len:
            raise TrafficError(f"{where} (request {r.index}): {r.prompt_tokens} prompt tokens + {out} output tokens "
                               f"exceed max_model_len {max_model_len}")
    requests = tuple(r for _, r in items)
    return Traffic(name=name, requests=requests, fixed_output=all(r.max_tokens is not None for r in requests))


# ---- files -------------------------------------------------------------------------------------

def _prompt_tokens(tokenizer, conversations: list[list[dict]], wheres: list[str]) -> list[int]:
    """Tokens of each conversation with the chat template and generation prompt, as the server
    counts them: the rendered text tokenised without adding special tokens again."""
    texts = []
    for where, messages in zip(wheres, conversations):
        try:
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        except Exception as e:  # jinja2 raises its own types (raise_exception in templates)
            raise TrafficError(f"{where}: the model's chat template refuses these messages "
                               f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _messages(where: str, value: Any) -> tuple[dict, ...]:
    if not isinstance(value, list) or not value:
        raise TrafficError(f"{where}: messages must be a non-empty list of {{role, content}} (got {_short(value)})")
    for k, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and m["role"]
                and isinstance(m.get("content"), str)):
            raise TrafficError(f"{where}: message {k} must be an object with role and content strings (got {_short(m)})")
    return tuple(dict(m) for m in value)


def _whole(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise TrafficError(f"{where}: {key} must be a whole number of tokens (got {_short(value)})")
    if value < 1:
        raise TrafficError(f"{where}: {key} must be at least 1 (got {_short(value)})")
    return int(value)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonl_lines(path: str, limit: int | None) -> list[tuple[int, dict]]:
    rows = []
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise TrafficError(f"{path} line {lineno}: not UTF-8 text ({e.reason})") from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TrafficError(f"{path} line {lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(obj, dict):
                    raise TrafficError(f"{path} line {lineno}: expected a JSON object, got {_short(obj)}")
                rows.append((lineno, obj))
                if limit is not None and len(rows) == limit:
                    break
    except OSError as e:
        raise TrafficError(f"cannot read {path}: {e.strerror}") from None
    if not rows:
        raise TrafficError(f"{path}: no requests (the file is empty)")
    return rows


def _jsonl(path: str, tokenizer, limit: int | None) -> list[tuple[str, TrafficRequest]]:
    rows = _jsonl_lines(path, limit)
    wheres, turns, conversations, fields = [], [], [], []
    history: dict[str, list[dict]] = {}   # session -> its messages so far (answers unknown)
    seen: dict[str, int] = {}             # session -> lines so far
    last_timestamp, timed = None, "timestamp" in rows[0][1]
    for lineno, obj in rows:
        where = f"{path} line {lineno}"
        unknown = sorted(set(obj) - set(JSONL_FIELDS))
        if unknown:
            raise TrafficError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(JSONL_FIELDS)})")
        if ("messages" in obj) == ("prompt" in obj):
            raise TrafficError(f"{where}: give messages (a list of {{role, content}}) or prompt (a string)"
                               + (", not both" if "messages" in obj else ""))
        if "messages" in obj:
            messages = _messages(where, obj["messages"])
        elif isinstance(obj["prompt"], str) and obj["prompt"]:
            messages = ({"role": "user", "content": obj["prompt"]},)
        else:
            raise TrafficError(f"{where}: prompt must be a non-empty string (got {_short(obj['prompt'])})")
        if "output_tokens" in obj and "max_tokens" in obj:
            raise TrafficError(f"{where}: give output_tokens or its alias max_tokens, not both")
        key = "output_tokens" if "output_tokens" in obj else "max_tokens"
        max_tokens = _whole(where, key, obj[key]) if key in obj else None
        if ("timestamp" in obj) != timed:
            raise TrafficError(f"{where}: {'no' if timed else 'a'} timestamp, unlike line {rows[0][0]} "
                               "(give every line a timestamp or none)")
        timestamp = obj.get("timestamp")
        if timed:
            if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) or not math.isfinite(timestamp) or timestamp < 0:
                raise TrafficError(f"{where}: timestamp must be a number of seconds >= 0 (got {_short(timestamp)})")
            if last_timestamp is not None and timestamp < last_timestamp:
                raise TrafficError(f"{where}: timestamp {timestamp} goes backwards (the line before has {last_timestamp})")
            last_timestamp = timestamp = float(timestamp)
        session = obj.get("session")
        if session is not None:
            if isinstance(session, bool) or not isinstance(session, (str, int)):
                raise TrafficError(f"{where}: session must be a string or an integer id (got {_short(session)})")
            session = str(session)
            turns.append(seen.get(session, 0))
            seen[session] = turns[-1] + 1
            history.setdefault(session, []).extend(messages)
            conversations.append(list(history[session]))
        else:
            turns.append(0)
            conversations.append(list(messages))
        wheres.append(where)
        fields.append((messages, max_tokens, timestamp, session))
    counts = _prompt_tokens(tokenizer, conversations, wheres)
    return [(where, TrafficRequest(index=i, messages=m, prompt_tokens=n, max_tokens=out, timestamp_s=t,
                                   session=s, turn=turn))
            for i, (where, (m, out, t, s), n, turn) in enumerate(zip(wheres, fields, counts, turns))]


def _sharegpt(path: str, tokenizer, limit: int | None) -> list[tuple[str, TrafficRequest]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise TrafficError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise TrafficError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise TrafficError(f"{path} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, list):
        raise TrafficError(f"{path}: expected a list of ShareGPT entries {{\"conversations\": [...]}}, got {type(data).__name__}")
    wheres, prompts, replies = [], [], []
    for k, entry in enumerate(data):
        where = f"{path} entry {k}"
        conv = entry.get("conversations", entry.get("conversation")) if isinstance(entry, dict) else None
        if not isinstance(conv, list):
            raise TrafficError(f"{where}: expected an object with a conversations list (got {_short(entry)})")
        turns = []
        for t in conv:
            if not (isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str)):
                raise TrafficError(f"{where}: each turn must be an object with from and value strings (got {_short(t)})")
            turns.append((SHAREGPT_ROLES.get(t["from"].lower()), t["value"]))
        for i in range(len(turns) - 1):
            if turns[i][0] == "user" and turns[i][1] and turns[i + 1][0] == "assistant" and turns[i + 1][1]:
                system = [{"role": "system", "content": v} for role, v in turns[:i] if role == "system"]
                wheres.append(where)
                prompts.append(tuple(system) + ({"role": "user", "content": turns[i][1]},))
                replies.append(turns[i + 1][1])
                break
        if limit is not None and len(prompts) == limit:
            break
    if not prompts:
        raise TrafficError(f"{path}: none of its {len(data)} entries has a human message followed by a gpt reply")
    counts = _prompt_tokens(tokenizer, [list(p) for p in prompts], wheres)
    outs = [len(ids) for ids in tokenizer(replies, add_special_tokens=False)["input_ids"]]
    return [(where, TrafficRequest(index=i, messages=p, prompt_tokens=n, max_tokens=out))
            for i, (where, p, n, out) in enumerate(zip(wheres, prompts, counts, outs))]
