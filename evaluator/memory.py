"""Predicted before measured: what each layout's engine should hold, from the model's config and the
device's memory, before any engine starts. Per token the KV cache takes

    2 (K and V) x layers x KV heads per device x head dim x bytes per element

(Qwen2.5-7B in bf16: 2 x 28 x 4 x 128 x 2 = 57,344 bytes on one device; with tp=2 each device keeps
2 of the 4 KV heads, half of that; KV heads are replicated, not split, once tp exceeds them). The
engine's budget for the KV cache (its memory fraction of the device, minus the weights' share and
its own overheads, as each backend documents in kv_budget) divided by that gives the tokens a
replica holds, and the tokens over the context length how many full-length sequences run at once.
The run then records what the engine itself reported (launchers.engines.base.read_log), and the
report shows both and the error.

    python -m evaluator.compare --dry-run ...    # prints the prediction of every layout
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from evaluator.records import RunConfig

DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "fp8": 1, "fp8_e4m3": 1,
               "fp8_e5m2": 1, "int8": 1}


def model_config(model: str) -> dict:
    from evaluator.modelinfo import model_config as read
    return read(model) or {}


def head_dim(cfg: dict) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def kv_heads_per_device(cfg: dict, tp: int) -> int:
    """KV heads each of tp devices keeps: split while tp divides them, one each beyond (replicated)."""
    kv = int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    return max(1, math.ceil(kv / tp))


def kv_bytes_per_token(cfg: dict, dtype_bytes: int, tp: int = 1) -> int:
    """KV-cache bytes one token takes on one device of a tp-way replica."""
    return 2 * int(cfg["num_hidden_layers"]) * kv_heads_per_device(cfg, tp) * head_dim(cfg) * dtype_bytes


def run_dtype(cfg: RunConfig, model: dict) -> str:
    """The dtype the engine computes in: --engine-kwargs dtype, else the model's (auto)."""
    dtype = str(cfg.engine_kwargs.get("dtype", "auto"))
    if dtype == "auto":
        dtype = str(model.get("torch_dtype") or model.get("dtype") or "bfloat16")
    return dtype.removeprefix("torch.")


def kv_dtype_bytes(cfg: RunConfig, model: dict) -> int:
    kv = str(cfg.engine_kwargs.get("kv_cache_dtype", "auto"))
    return DTYPE_BYTES.get(run_dtype(cfg, model) if kv == "auto" else kv, 2)


def weight_bytes(cfg: RunConfig, model: dict) -> int | None:
    """The weights in the run's dtype (a bf16 checkpoint run in float32 takes twice its files)."""
    from evaluator.modelinfo import weight_bytes as file_bytes
    if Path(cfg.model).is_file():           # a quantised checkpoint (GGUF): its file is what the device holds
        return Path(cfg.model).stat().st_size
    on_disk = file_bytes(cfg.model)
    if on_disk is None:
        return None
    stored = DTYPE_BYTES.get(str(model.get("torch_dtype") or model.get("dtype") or "bfloat16").removeprefix("torch."), 2)
    return int(on_disk * DTYPE_BYTES.get(run_dtype(cfg, model), stored) / stored)


@dataclass(frozen=True)
class Prediction:
    kv_bytes_per_token: int            # on one device
    weights_gib_per_device: float
    device_gib: float                  # what the engine sizes itself against (GPU memory; a CPU host's node memory)
    kv_budget_gib: float               # KV-cache memory per device
    kv_cache_tokens: int               # per replica (every device of it holds the same tokens)
    context_tokens: int | None
    max_concurrency: float | None      # full-context sequences at once
    how: str                           # the backend's rule, in words

    def to_dict(self) -> dict:
        return asdict(self)


def device_bytes(cfg: RunConfig) -> int | None:
    """Total memory of one device as the engine sees it: NVML on GPUs; on CPU hosts the memory node
    vLLM-CPU sizes itself against (/sys/devices/system/node/node0/meminfo), else the machine's."""
    if cfg.device == "cuda":
        from evaluator.hosts import gpus
        found = gpus()
        return int(min(g.memory_gib for g in found) * 2**30) if found else None
    try:
        for line in Path("/sys/devices/system/node/node0/meminfo").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[2] == "MemTotal:":
                return int(parts[3]) * 1024
    except OSError:
        pass
    import psutil
    return psutil.virtual_memory().total


def predict(cfg: RunConfig) -> Prediction | None:
    """The prediction for one layout, or None where the backend has no rule or the model's
    config or weights cannot be read (a hub id not cached)."""
    from evaluator.errors import UsageError
    from evaluator.modelinfo import context_length
    from evaluator.pool import engine_spec
    from launchers.engines.base import kv_budget
    try:
        model = model_config(cfg.model_folder)
        per_token = kv_bytes_per_token(model, kv_dtype_bytes(cfg, model), cfg.tp)
    except (UsageError, KeyError, TypeError, ValueError):
        return None
    weights, total = weight_bytes(cfg, model), device_bytes(cfg)
    if weights is None or total is None:
        return None
    per_device = weights / cfg.tp
    budget = kv_budget(cfg.engine, engine_spec(cfg), model, total, per_device)
    if budget is None:
        return None
    kv_bytes, how = budget
    tokens = max(0, int(kv_bytes // per_token))
    context = context_length(cfg)
    return Prediction(per_token, per_device / 2**30, total / 2**30, kv_bytes / 2**30, tokens, context,
                      tokens / context if context else None, how)


def predict_for(cfg: RunConfig) -> dict:
    """The prediction as summary.json keeps it ({} where there is none)."""
    p = predict(cfg)
    return {"predicted": p.to_dict()} if p else {}


def error(predicted: float | None, reported: float | None) -> float | None:
    """(predicted - reported) / reported."""
    if predicted is None or not reported:
        return None
    return (predicted - reported) / reported


def describe(cfg: RunConfig) -> str:
    p = predict(cfg)
    label = f"{cfg.engine} {cfg.layout.label}" + (" serve" if cfg.workload == "serve" else "")
    if p is None:
        return f"{label}: no prediction (model config or weights not readable, or no rule for {cfg.engine})"
    conc = f", {p.max_concurrency:.1f} sequences of {p.context_tokens} tokens at once" if p.max_concurrency else ""
    return (f"{label}: weights {p.weights_gib_per_device:.2f} GiB per device; KV cache {p.kv_budget_gib:.2f} GiB per "
            f"device = {p.kv_cache_tokens:,} tokens per replica ({p.kv_bytes_per_token:,} bytes per token per "
            f"device){conc} [{p.how}]")


def describe_plan(configs: list[RunConfig]) -> list[str]:
    return ["predicted, before any engine starts:"] + ["  " + describe(c) for c in configs]


def check_fits(cfg: RunConfig) -> None:
    """Refuse a layout whose predicted KV cache cannot hold one sequence of its context length:
    the engine would refuse to start after minutes of loading."""
    from evaluator.errors import UsageError
    p = predict(cfg)
    if p is None or not p.context_tokens:
        return
    if p.kv_cache_tokens < p.context_tokens:
        raise UsageError(f"the KV cache would hold {p.kv_cache_tokens:,} tokens per replica ({p.kv_budget_gib:.2f} GiB "
                         f"per device after {p.weights_gib_per_device:.2f} GiB of weights; {p.how}), less than one "
                         f"sequence of the {p.context_tokens:,}-token context: lower --max-model-len, give the engine "
                         f"more memory, or use a larger --tp")

