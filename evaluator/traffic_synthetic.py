"""Synthetic traffic for serving runs: requests of chosen prompt and output lengths, drawn from
length distributions, with an optional shared prefix, each prompt built from the model's own
tokens until the chat-templated prompt is exactly its drawn length. load_traffic
(evaluator.traffic) calls it for specs of the form

  synthetic:in=<dist>,out=<dist>[,n=100][,prefix=0][,prefixes=1][,seed=<int>]
      <dist> = 200 | uniform(a,b) | normal(mean,sd) | lognormal(median,sigma), each optionally
      followed by [lo:hi] (clipped; either side may be left empty)
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from evaluator.traffic_request import TrafficError, TrafficRequest

SYNTHETIC_KEYS = ("n", "in", "out", "prefix", "prefixes", "seed")
DISTRIBUTIONS = ("a number, uniform(a,b), normal(mean,sd) or lognormal(median,sigma), "
                 "optionally followed by [lo:hi]")
MAX_ADJUST_PASSES = 64      # re-tokenisations allowed to bring one synthetic prompt to its length
MAX_DRAW_MISSES = 10_000    # random ids in a row that are no usable token before giving up


_DIST = re.compile(r"^(?:(?P<fn>uniform|normal|lognormal)\((?P<args>[^()]*)\)|(?P<num>[^()\[\]]+))"
                   r"(?:\[(?P<lo>[^:\]]*):(?P<hi>[^\]]*)\])?$")


@dataclass(frozen=True)
class _Dist:
    """One length distribution of a synthetic spec; draws whole tokens, at least 1."""
    text: str
    kind: str                         # "fixed" | "uniform" | "normal" | "lognormal"
    a: float
    b: float = 0.0
    lo: float | None = None
    hi: float | None = None

    def draw(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            x = self.a
        elif self.kind == "uniform":
            x = rng.uniform(self.a, self.b)
        elif self.kind == "normal":
            x = rng.gauss(self.a, self.b)
        else:
            x = rng.lognormvariate(math.log(self.a), self.b)
        if self.lo is not None:
            x = max(x, self.lo)
        if self.hi is not None:
            x = min(x, self.hi)
        return max(1, math.floor(x + 0.5))


def _number(key: str, text: str, what: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not math.isfinite(x):
        raise TrafficError(f"synthetic: {key}={what}: {text.strip()!r} is not a number")
    return x


def _dist(key: str, text: str) -> _Dist:
    m = _DIST.match(text.replace(" ", ""))
    if not m:
        raise TrafficError(f"synthetic: {key}={text} is not a distribution (expected {DISTRIBUTIONS})")
    lo = _number(key, m["lo"], text) if m["lo"] else None
    hi = _number(key, m["hi"], text) if m["hi"] else None
    if lo is not None and hi is not None and lo > hi:
        raise TrafficError(f"synthetic: {key}={text}: bounds [{m['lo']}:{m['hi']}] have lo above hi")
    if m["num"] is not None:
        x = _number(key, m["num"], text)
        if math.floor(x + 0.5) < 1:
            raise TrafficError(f"synthetic: {key}={text} must be at least 1 token")
        return _Dist(text, "fixed", x, lo=lo, hi=hi)
    args = m["args"].split(",")
    if len(args) != 2:
        raise TrafficError(f"synthetic: {key}={text}: {m['fn']} takes 2 numbers (expected {DISTRIBUTIONS})")
    a, b = (_number(key, s, text) for s in args)
    if m["fn"] == "uniform" and a > b:
        raise TrafficError(f"synthetic: {key}={text}: uniform(a,b) needs a <= b")
    if m["fn"] != "uniform" and b < 0:
        raise TrafficError(f"synthetic: {key}={text}: the spread must be >= 0")
    if m["fn"] == "lognormal" and a <= 0:
        raise TrafficError(f"synthetic: {key}={text}: lognormal's median must be > 0")
    return _Dist(text, m["fn"], a, b, lo, hi)


def _split(body: str) -> list[str]:
    """Split at commas outside () and [] (distributions carry commas of their own)."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(body):
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    return items + [body[start:]]


def _parse_synthetic(spec: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in _split(spec.removeprefix("synthetic:")):
        key, eq, value = item.strip().partition("=")
        key = key.strip()
        if not eq or not value.strip():
            raise TrafficError(f"synthetic: {item.strip()!r} is not key=value (in {spec!r})")
        if key not in SYNTHETIC_KEYS:
            raise TrafficError(f"synthetic: unknown key {key!r} (known: {', '.join(SYNTHETIC_KEYS)})")
        if key in values:
            raise TrafficError(f"synthetic: {key} given twice")
        values[key] = value.strip()
    missing = [k for k in ("in", "out") if k not in values]
    if missing:
        raise TrafficError(f"synthetic: {' and '.join(missing)} required, e.g. synthetic:n=200,in=2000,out=200")
    return values


def _int(values: dict[str, str], key: str, default: int, least: int | None) -> int:
    text = values.get(key, str(default))
    try:
        x = int(text)
    except ValueError:
        raise TrafficError(f"synthetic: {key}={text} is not a whole number") from None
    if least is not None and x < least:
        raise TrafficError(f"synthetic: {key}={text} must be at least {least}")
    return x


class _PromptBuilder:
    """Builds user messages whose templated prompt is exactly N tokens. Content is random
    vocabulary tokens decoded to text (as vLLM's random dataset does); decoding and re-encoding
    can merge neighbours, so the templated prompt is re-tokenised and tokens added or removed at
    the end until it matches. passes: re-tokenisations each prompt needed (1 = exact at once)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab = len(tokenizer)
        self.special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
        self.usable: dict[int, bool] = {}
        self.passes: list[int] = []
        self.overhead = self.count("")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def count(self, content: str) -> int:
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)
        return len(self.encode(text))

    def draw(self, n: int, rng: random.Random) -> list[int]:
        """n random ids of tokens that decode to printable characters and encode back to
        themselves (a lone byte of a multi-byte character decodes to U+FFFD, which re-encodes as
        several; control characters make prompts no user sends)."""
        ids, misses = [], 0
        while len(ids) < n:
            batch = [rng.randrange(self.vocab) for _ in range(n - len(ids))]
            self._check(sorted({i for i in batch if i not in self.usable}))
            found = [i for i in batch if self.usable[i]]
            ids += found
            misses = 0 if found else misses + len(batch)
            if misses > MAX_DRAW_MISSES:
                raise TrafficError("synthetic: the tokenizer has no token that decodes to text and back to itself")
        return ids

    def _check(self, ids: list[int]) -> None:
        """Decide for each id whether it is usable, in one batch (one at a time is the bottleneck)."""
        texts = self.tokenizer.batch_decode([[i] for i in ids])
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if ids else []
        for i, text, back in zip(ids, texts, encoded):
            self.usable[i] = (i not in self.special and bool(text) and "\ufffd" not in text
                              and all(c.isprintable() or c in " \n" for c in text) and back == [i])

    def prefix(self, tokens: int, taken: set[str], rng: random.Random) -> str:
        """A text of exactly `tokens` tokens on its own, different from those in `taken`."""
        for _ in range(MAX_ADJUST_PASSES):
            ids = self.draw(tokens, rng)
            for _ in range(MAX_ADJUST_PASSES):
                text = self.tokenizer.decode(ids)
                n = len(self.encode(text))
                if n == tokens:
                    break
                ids = ids + self.draw(tokens - n, rng) if n < tokens else ids[:tokens - n]
            if n == tokens and text not in taken:
                return text
        raise TrafficError(f"synthetic: cannot build {len(taken) + 1} distinct prefixes of exactly {tokens} tokens")

    def content(self, where: str, tokens: int, prefix: str, rng: random.Random) -> str:
        """User content whose templated prompt is exactly `tokens` tokens, starting with `prefix`
        whose own tokens stay intact (so requests sharing it share those tokens)."""
        prefix_ids = self.encode(prefix) if prefix else []
        least = self.overhead + max(len(prefix_ids), 1)
        if tokens < least:
            raise TrafficError(f"{where}: the chat template alone takes {self.overhead} prompt tokens"
                               + (f" and the prefix {len(prefix_ids)}" if prefix_ids else "")
                               + f", so in must be at least {least}")
        suffix, n = self.draw(tokens - self.overhead - len(prefix_ids), rng), None
        for passes in range(1, MAX_ADJUST_PASSES + 1):
            content = prefix + self.tokenizer.decode(suffix)
            if suffix and prefix_ids and self.encode(content)[:len(prefix_ids)] != prefix_ids:
                suffix[:1] = self.draw(1, rng)    # the first token merged into the prefix's last: another
                continue
            n = self.count(content)
            if n == tokens:
                self.passes.append(passes)
                return content
            if n < tokens:
                suffix += self.draw(tokens - n, rng)
            elif suffix:
                del suffix[tokens - n:]
            else:
                break
        raise TrafficError(f"{where}: cannot make a prompt of exactly {tokens} tokens with this tokenizer "
                           f"(decoded tokens keep merging; last try: {n})")


# the tail a length check allows for: an unbounded distribution draws beyond its bound this rarely
TAIL = 1e-6
TAIL_Z = 4.753424308822899          # the standard normal's 1 - TAIL quantile


def upper_bound(d: _Dist) -> float:
    """The largest length `d` draws, except once in 1/TAIL draws for an unbounded normal or
    lognormal (whose tails have no end): what a context check must allow for."""
    if d.kind == "fixed":
        top = d.a
    elif d.kind == "uniform":
        top = d.b
    elif d.kind == "normal":
        top = d.a + TAIL_Z * d.b
    else:
        top = d.a * math.exp(TAIL_Z * d.b) if TAIL_Z * d.b < 700 else math.inf
    if d.hi is not None:
        top = min(top, d.hi)
    if d.lo is not None:
        top = max(top, d.lo)
    return max(1, math.floor(top + 0.5)) if math.isfinite(top) else math.inf


def lower_bound(d: _Dist) -> float:
    """The smallest length `d` draws, except once in 1/TAIL draws for an unbounded tail."""
    if d.kind == "fixed":
        low = d.a
    elif d.kind == "uniform":
        low = d.a
    elif d.kind == "normal":
        low = d.a - TAIL_Z * d.b
    else:
        low = d.a * math.exp(-TAIL_Z * d.b)
    if d.lo is not None:
        low = max(low, d.lo)
    if d.hi is not None:
        low = min(low, d.hi)
    return max(1, math.floor(low + 0.5))


class SyntheticTraffic:
    """A synthetic shape as an endless stream of requests, none built before it is needed: the
    lengths are drawn (cheap), checked, and only then are the prompts made. `requests` is the
    spec's first n (drawn from Random(seed), request by request: the first k requests of n=200 are
    those of n=k); `stream(key)` is a stream of its own, seeded by the key as well (a load level
    draws its requests afresh from the stream of its label), sharing the prefixes."""
    fixed_output = True
    has_timestamps = False
    has_sessions = False

    def __init__(self, spec: str, tokenizer, seed: int, limit: int | None):
        values = _parse_synthetic(spec)
        self.n = _int(values, "n", 100, 1)
        self.prefix_tokens = _int(values, "prefix", 0, 0)
        self.prefixes = _int(values, "prefixes", 1, 1)
        self.seed = _int(values, "seed", seed, None)
        if self.prefixes > 1 and self.prefix_tokens == 0:
            raise TrafficError(f"synthetic: prefixes={self.prefixes} needs prefix=<tokens> above 0")
        self.in_dist, self.out_dist = _dist("in", values["in"]), _dist("out", values["out"])
        if limit is not None:
            self.n = min(self.n, limit)
        self.tokenizer = tokenizer
        self.name = "synthetic " + " ".join(f"{k}={v}" for k, v in values.items())
        self._builder: _PromptBuilder | None = None
        self._prefix_texts: list[str] | None = None
        self._requests: tuple[TrafficRequest, ...] | None = None

    @property
    def builder(self) -> _PromptBuilder:
        if self._builder is None:
            self._builder = _PromptBuilder(self.tokenizer)
        return self._builder

    def check(self, max_model_len: int | None) -> None:
        """Refuse, before any prompt is built, a shape that can draw a request beyond the context
        or below what the chat template alone takes (an unbounded tail: beyond what it draws once
        in a million)."""
        least = self.builder.overhead + max(self.prefix_tokens, 1)
        low = lower_bound(self.in_dist)
        if low < least:
            what = (f"in={self.in_dist.text}" if self.in_dist.kind == "fixed"
                    else f"in={self.in_dist.text} can draw {low} token{'s' if low > 1 else ''}")
            raise TrafficError(f"synthetic: {what}: the chat template alone takes {self.builder.overhead} prompt tokens"
                               + (f" and the prefix {self.prefix_tokens}" if self.prefix_tokens else "")
                               + f", so in must be at least {least}"
                               + ("" if self.in_dist.kind == "fixed" else f" (bound it: [{least}:])"))
        if max_model_len is None:
            return
        top_in, top_out = upper_bound(self.in_dist), upper_bound(self.out_dist)
        if top_in + top_out <= max_model_len:
            return
        fixed = self.in_dist.kind == "fixed" and self.out_dist.kind == "fixed"
        largest = "" if fixed else " at their largest (an unbounded tail: what one draw in a million exceeds)"
        top = lambda v: "unbounded" if not math.isfinite(v) else f"{v:,.0f}"
        room = max_model_len - (top_out if math.isfinite(top_out) else 1)
        d = self.in_dist
        body = re.sub(r"\[[^\]]*\]$", "", d.text.replace(" ", ""))
        low = "" if d.lo is None else f"{d.lo:g}"
        hint = (f"; bound it, e.g. in={body}[{low}:{room}]" if not fixed and room >= 1
                else "; lower in/out or raise --max-model-len")
        raise TrafficError(f"synthetic: in={self.in_dist.text} ({top(top_in)} tokens) + out={self.out_dist.text} "
                           f"({top(top_out)} tokens){largest} exceed max_model_len {max_model_len}{hint}")

    def prefix_texts(self) -> list[str]:
        if self._prefix_texts is None:
            rng = random.Random(f"{self.seed}/prefixes")
            texts: list[str] = []
            for _ in range(self.prefixes if self.prefix_tokens else 0):
                texts.append(self.builder.prefix(self.prefix_tokens, set(texts), rng))
            self._prefix_texts = texts
        return self._prefix_texts

    def stream(self, key: str | None = None) -> "SyntheticStream":
        return SyntheticStream(self, random.Random(self.seed if key is None else f"{self.seed}/{key}"))

    @property
    def requests(self) -> tuple[TrafficRequest, ...]:
        if self._requests is None:
            self._requests = tuple(self.stream().take(self.n))
        return self._requests

    def lengths(self, n: int) -> list[tuple[int, int]]:
        """The (in, out) lengths of the spec's first n requests, no prompt built."""
        rng = random.Random(self.seed)
        return [(self.in_dist.draw(rng), self.out_dist.draw(rng)) for _ in range(n)]

    def shape(self) -> dict:
        from evaluator.serving.metrics import percentile
        pairs = self.lengths(self.n)
        d: dict = {"requests": self.n}
        for key, values in (("prompt_tokens", [a for a, _ in pairs]), ("max_tokens", [b for _, b in pairs])):
            d[f"{key}_mean"] = sum(values) / len(values) if values else None
            d[f"{key}_p50"] = percentile(values, 50)
            d[f"{key}_p90"] = percentile(values, 90)
        return d


class SyntheticStream:
    """Requests drawn one after another from one seeded random stream: lengths, then content."""

    def __init__(self, traffic: SyntheticTraffic, rng: random.Random):
        self.traffic, self.rng, self.count = traffic, rng, 0

    def take(self, k: int) -> list[TrafficRequest]:
        t, out = self.traffic, []
        texts = t.prefix_texts()
        for _ in range(k):
            i = self.count
            in_tokens, out_tokens = t.in_dist.draw(self.rng), t.out_dist.draw(self.rng)
            where = (f"synthetic: in={t.in_dist.text}" if t.in_dist.kind == "fixed"
                     else f"synthetic request {i}: in={in_tokens} (drawn from {t.in_dist.text})")
            content = t.builder.content(where, in_tokens, texts[i % t.prefixes] if texts else "", self.rng)
            out.append(TrafficRequest(index=i, messages=({"role": "user", "content": content},),
                                      prompt_tokens=in_tokens, max_tokens=out_tokens))
            self.count += 1
        return out


def synthetic(spec: str, tokenizer, seed: int, limit: int | None) -> tuple[str, list[tuple[str, TrafficRequest]]]:
    """The spec's first n requests, built now (what load_traffic's callers of files get)."""
    t = SyntheticTraffic(spec, tokenizer, seed, limit)
    return t.name, [(f"synthetic request {r.index}", r) for r in t.requests]
