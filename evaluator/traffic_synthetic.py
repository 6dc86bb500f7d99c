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

    def __init__(self, tokenizer, rng: random.Random):
        self.tokenizer, self.rng = tokenizer, rng
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

    def draw(self, n: int) -> list[int]:
        """n random ids of tokens that decode to printable characters and encode back to
        themselves (a lone byte of a multi-byte character decodes to U+FFFD, which re-encodes as
        several; control characters make prompts no user sends)."""
        ids, misses = [], 0
        while len(ids) < n:
            batch = [self.rng.randrange(self.vocab) for _ in range(n - len(ids))]
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

    def prefix(self, tokens: int, taken: set[str]) -> str:
        """A text of exactly `tokens` tokens on its own, different from those in `taken`."""
        for _ in range(MAX_ADJUST_PASSES):
            ids = self.draw(tokens)
            for _ in range(MAX_ADJUST_PASSES):
                text = self.tokenizer.decode(ids)
                n = len(self.encode(text))
                if n == tokens:
                    break
                ids = ids + self.draw(tokens - n) if n < tokens else ids[:tokens - n]
            if n == tokens and text not in taken:
                return text
        raise TrafficError(f"synthetic: cannot build {len(taken) + 1} distinct prefixes of exactly {tokens} tokens")

    def content(self, where: str, tokens: int, prefix: str) -> str:
        """User content whose templated prompt is exactly `tokens` tokens, starting with `prefix`
        whose own tokens stay intact (so requests sharing it share those tokens)."""
        prefix_ids = self.encode(prefix) if prefix else []
        least = self.overhead + max(len(prefix_ids), 1)
        if tokens < least:
            raise TrafficError(f"{where}: the chat template alone takes {self.overhead} prompt tokens"
                               + (f" and the prefix {len(prefix_ids)}" if prefix_ids else "")
                               + f", so in must be at least {least}")
        suffix, n = self.draw(tokens - self.overhead - len(prefix_ids)), None
        for passes in range(1, MAX_ADJUST_PASSES + 1):
            content = prefix + self.tokenizer.decode(suffix)
            if suffix and prefix_ids and self.encode(content)[:len(prefix_ids)] != prefix_ids:
                suffix[:1] = self.draw(1)    # the first token merged into the prefix's last: another
                continue
            n = self.count(content)
            if n == tokens:
                self.passes.append(passes)
                return content
            if n < tokens:
                suffix += self.draw(tokens - n)
            elif suffix:
                del suffix[tokens - n:]
            else:
                break
        raise TrafficError(f"{where}: cannot make a prompt of exactly {tokens} tokens with this tokenizer "
                           f"(decoded tokens keep merging; last try: {n})")


def synthetic(spec: str, tokenizer, seed: int, limit: int | None) -> tuple[str, list[tuple[str, TrafficRequest]]]:
    values = _parse_synthetic(spec)
    n = _int(values, "n", 100, 1)
    prefix_tokens = _int(values, "prefix", 0, 0)
    prefixes = _int(values, "prefixes", 1, 1)
    seed = _int(values, "seed", seed, None)
    if prefixes > 1 and prefix_tokens == 0:
        raise TrafficError(f"synthetic: prefixes={prefixes} needs prefix=<tokens> above 0")
    in_dist, out_dist = _dist("in", values["in"]), _dist("out", values["out"])
    if limit is not None:
        n = min(n, limit)
    rng = random.Random(seed)
    builder = _PromptBuilder(tokenizer, rng)
    texts: list[str] = []
    for _ in range(prefixes if prefix_tokens else 0):
        texts.append(builder.prefix(prefix_tokens, set(texts)))
    items = []
    for i in range(n):
        # one rng, drawn request by request: the first k requests of n=200 are those of n=k
        in_tokens, out_tokens = in_dist.draw(rng), out_dist.draw(rng)
        where = (f"synthetic: in={in_dist.text}" if in_dist.kind == "fixed"
                 else f"synthetic request {i}: in={in_tokens} (drawn from {in_dist.text})")
        content = builder.content(where, in_tokens, texts[i % prefixes] if texts else "")
        items.append((f"synthetic request {i}", TrafficRequest(
            index=i, messages=({"role": "user", "content": content},), prompt_tokens=in_tokens, max_tokens=out_tokens)))
    return "synthetic " + " ".join(f"{k}={v}" for k, v in values.items()), items
