"""The profile of a host, as python -m evaluator.profile writes it (profile.json) and the prediction
reads it: what the model is (ModelShape, from its config and weight files), what one device measured
with the real engine (decode steps, prefills, a stored run's offline batch or serving levels), what
the devices measured between them (all-reduce times, memory bandwidth), and the workload's lengths.

    python -c "from evaluator.predict.records import load_profile; print(load_profile('profile.json').engine)"
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluator.errors import UsageError

PROFILE_VERSION = 1


@dataclass(frozen=True)
class ModelShape:
    """What a decode step of the model moves and computes, from config.json and the weight files."""
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    weight_bytes: int                 # every weight file, in the run's dtype
    embedding_bytes: int              # the input table when it is not the output head: a step reads B rows of it
    dtype_bytes: int                  # activations: what an all-reduce sends per value
    kv_dtype_bytes: int

    @property
    def params(self) -> float:
        """Parameters a token multiplies through (the input table is a lookup, not a product)."""
        return (self.weight_bytes - self.embedding_bytes) / self.dtype_bytes

    def weights_read(self, tp: int) -> float:
        """Bytes of weights one device reads per step: its 1/tp share of every matrix."""
        return (self.weight_bytes - self.embedding_bytes) / tp

    def kv_bytes_per_token(self, tp: int) -> int:
        """KV-cache bytes per token on one device (KV heads split while tp divides them, then replicated)."""
        return 2 * self.layers * max(1, math.ceil(self.kv_heads / tp)) * self.head_dim * self.kv_dtype_bytes

    def flops_per_token(self, context: float) -> float:
        """2 per parameter, plus attention over the context (QK^T and AV: 4 x heads x head dim each)."""
        return 2 * self.params + 4 * self.layers * self.heads * self.head_dim * context

    def allreduce_bytes(self, tokens: float) -> float:
        """One all-reduce of a tensor-parallel step: the hidden state of every token in the step."""
        return tokens * self.hidden * self.dtype_bytes

    @classmethod
    def from_config(cls, config: dict, weight_bytes: int, dtype_bytes: int = 2, kv_dtype_bytes: int | None = None
                    ) -> "ModelShape":
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        vocab = int(config.get("vocab_size") or 0)
        tied = bool(config.get("tie_word_embeddings", False))
        return cls(layers=int(config["num_hidden_layers"]), hidden=hidden, heads=heads,
                   kv_heads=int(config.get("num_key_value_heads") or heads),
                   head_dim=int(config.get("head_dim") or hidden // heads), vocab=vocab,
                   weight_bytes=int(weight_bytes), embedding_bytes=0 if tied else vocab * hidden * dtype_bytes,
                   dtype_bytes=dtype_bytes, kv_dtype_bytes=kv_dtype_bytes or dtype_bytes)


@dataclass(frozen=True)
class DecodePoint:
    """One decode step at `batch` sequences of `context_tokens` each (mean over the timed steps)."""
    batch: int
    context_tokens: float
    step_s: float


@dataclass(frozen=True)
class PrefillPoint:
    """`tokens` prompt tokens of `seqs` prompts of `context_tokens` each, prefilled in `seconds`."""
    tokens: int
    seqs: int
    context_tokens: float
    seconds: float


@dataclass(frozen=True)
class OfflineObservation:
    """A stored single-device offline run: `prompts` prompts of these mean lengths in generate_s."""
    prompts: int
    prompt_tokens: float              # mean per prompt
    output_tokens: float              # mean per prompt
    generate_s: float
    source: str = ""


@dataclass(frozen=True)
class ServeObservation:
    """One serving level of a stored single-device run (closed loop: value = requests in flight;
    rate: requests/s), its median TPOT and TTFT."""
    kind: str                         # "concurrency" or "rate"
    value: float
    prompt_tokens: float
    output_tokens: float
    tpot_s: float
    ttft_s: float | None = None
    source: str = ""
    tail_percentile: float | None = None     # the run's SLO percentile, where the level recorded it
    tpot_tail_s: float | None = None
    ttft_tail_s: float | None = None


@dataclass(frozen=True)
class AllReducePoint:
    """One all-reduce of `bytes` between `devices` devices took `seconds` (median of the probe's)."""
    devices: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class Workload:
    """The lengths a prediction assumes when the run does not fix them (measured on its prompts)."""
    prompts: int
    prompt_tokens: float              # mean per prompt
    output_tokens: float              # mean per prompt
    source: str


@dataclass(frozen=True)
class Profile:
    """Everything a prediction needs about one engine on this host; profile.json."""
    engine: str
    device: str                       # "cuda" or "cpu"
    device_name: str
    model: str
    shape: ModelShape
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    max_model_len: int | None = None
    cpu_cores_per_device: int = 1
    startup_s: float | None = None
    kv_cache_tokens: int | None = None            # one device's engine, as it reported
    decode: tuple[DecodePoint, ...] = ()
    prefill: tuple[PrefillPoint, ...] = ()
    offline: tuple[OfflineObservation, ...] = ()
    serve: tuple[ServeObservation, ...] = ()
    bandwidth_bytes_per_s: float | None = None    # one device's memory, as the probe read it
    bandwidth_source: str = ""
    allreduce: tuple[AllReducePoint, ...] = ()
    allreduce_source: str = ""                    # "gloo", "nccl" or where the figures came from
    workload: Workload | None = None
    source: str = "engine"                        # "engine": measured here; else the stored run(s) it read
    created_at: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    schema_version: int = PROFILE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Profile":
        if not isinstance(d, dict) or d.get("schema_version", 0) > PROFILE_VERSION or "shape" not in d:
            raise ValueError("not a profile this version reads (python -m evaluator.profile writes one)")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)} (written by a newer version?)")
        d = dict(d)
        d["shape"] = ModelShape(**d["shape"])
        for key, kind in (("decode", DecodePoint), ("prefill", PrefillPoint), ("offline", OfflineObservation),
                          ("serve", ServeObservation), ("allreduce", AllReducePoint)):
            d[key] = tuple(kind(**x) for x in d.get(key, ()))
        d["workload"] = Workload(**d["workload"]) if d.get("workload") else None
        return cls(**d)


def load_profile(path: str | Path) -> Profile:
    """A profile file, or UsageError saying in one line why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--profile {path}: no such file (python -m evaluator.profile writes one)")
    try:
        return Profile.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError, ValueError) as e:
        raise UsageError(f"--profile {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def write_profile(profile: Profile, path: Path) -> None:
    from evaluator.store import atomic_write
    atomic_write(path, json.dumps(profile.to_dict(), indent=1) + "\n")
