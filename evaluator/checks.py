"""Every check that needs no engine, run before any engine starts: the layout against this host,
every number against its range, every name that becomes a path, the model's heads and size, and
whether the prompts fit the context. A failed check is one UsageError line and exit code 2, with
nothing written. The run, --resume, the comparison and the benchmark all check through here.

    python -m evaluator --mode tp --gpus 3      # "tp=3 does not divide the model's 14 attention heads"
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from evaluator.errors import UsageError
from evaluator.hosts import cpu_device_count, gpu_count, gpus, gpus_without_p2p
from evaluator.memory import check_fits
from evaluator.modelinfo import context_length, model_config, weight_bytes
from evaluator.records import Prompt, RunConfig
from evaluator.sharding import SHARDING_MODES
from launchers.engines.base import (EngineNotAvailable, cannot, check_installed, deterministic_problem,
                                    layout_kwarg_problem, layout_problem, loads_problem, quantization_problem)


def _at_least(name: str, value, minimum=1) -> None:
    if value is not None and value < minimum:
        raise UsageError(f"{name} must be at least {minimum} (got {value})")


def check_sampling(cfg: RunConfig) -> None:
    s = cfg.sampling
    _at_least("--max-tokens", s.max_tokens)
    _at_least("--n", s.n)
    if not (s.temperature >= 0 and math.isfinite(s.temperature)):
        raise UsageError(f"--temperature must be 0 (greedy) or more (got {s.temperature})")
    if not 0 < s.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1] (got {s.top_p})")
    if s.top_k != -1 and s.top_k < 1:
        raise UsageError(f"--top-k must be -1 (off) or at least 1 (got {s.top_k})")
    if not (s.repetition_penalty > 0 and math.isfinite(s.repetition_penalty)):
        raise UsageError(f"--repetition-penalty must be positive (got {s.repetition_penalty})")
    if not 0 <= s.seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2^32) (got {s.seed})")
    if s.n > 1 and s.temperature <= 0:
        raise UsageError("--n > 1 needs --temperature > 0 (greedy answers would all be the same)")


def check_serve(cfg: RunConfig) -> None:
    sv = cfg.serve
    if sv is None:
        raise UsageError("--workload serve needs load levels (--concurrency or --request-rate)")
    if not sv.levels and not sv.capacity:
        raise UsageError("give at least one load level (--concurrency 1,4 or --request-rate 2,inf)")
    for v in sv.levels:
        if sv.level_kind == "concurrency" and (math.isinf(v) or v != int(v) or v < 1):
            raise UsageError(f"--concurrency values must be whole numbers of at least 1 (got {v:g})")
        if sv.level_kind == "rate" and not v > 0:
            raise UsageError(f"--request-rate values must be positive requests/s or inf (got {v:g})")
    if len(set(sv.levels)) != len(sv.levels):
        raise UsageError("load levels repeat; give each once")
    lp = sv.level_prompts
    body = lp[:-1] if lp.endswith("x") else lp
    if lp != "all" and not (body.isdigit() and int(body) >= 1):
        raise UsageError(f"--level-prompts must be all, N or Nx with N >= 1 (got {lp!r})")
    for name, v in (("--slo-ttft-ms", sv.slo_ttft_ms), ("--slo-tpot-ms", sv.slo_tpot_ms),
                    ("--request-timeout", sv.request_timeout_s)):
        if v is not None and not v > 0:
            raise UsageError(f"{name} must be positive (got {v:g})")
    if sv.capacity:
        if sv.slo_ttft_ms is None and sv.slo_tpot_ms is None:
            raise UsageError("--capacity needs an SLO to hold: --slo-ttft-ms and/or --slo-tpot-ms")
        if not (sv.capacity_start > 0 and math.isfinite(sv.capacity_start)):
            raise UsageError(f"--capacity-start must be a positive request rate (got {sv.capacity_start:g})")
        if sv.capacity_levels < 2:
            raise UsageError(f"--capacity-levels must be at least 2 (got {sv.capacity_levels})")
        if not sv.capacity_tolerance > 0:
            raise UsageError(f"--capacity-tolerance must be positive (got {sv.capacity_tolerance:g})")
    if not 0 < sv.slo_percentile <= 100:
        raise UsageError(f"--slo-percentile must be in (0, 100] (got {sv.slo_percentile:g})")
    if sv.max_concurrency is not None and sv.max_concurrency < 1:
        raise UsageError(f"--max-concurrency must be at least 1 (got {sv.max_concurrency})")
    if sv.warmup_requests < 0:
        raise UsageError(f"--warmup-requests must be 0 (none) or more (got {sv.warmup_requests})")
    if not (sv.level_min_s >= 0 and math.isfinite(sv.level_min_s)):
        raise UsageError(f"--level-min-s must be 0 or a number of seconds (got {sv.level_min_s:g})")
    if sv.capacity_repeats < 0:
        raise UsageError(f"--capacity-repeats must be 0 or more (got {sv.capacity_repeats})")
    if not 0.5 <= sv.slo_confidence < 1:
        raise UsageError(f"--slo-confidence must be in [0.5, 1) (got {sv.slo_confidence:g})")
    if not sv.health_interval_s >= 0:
        raise UsageError(f"--health-interval must be 0 (off) or positive (got {sv.health_interval_s:g})")
    for v in (sv.levels if sv.level_kind == "replay" else ()):
        if not (v > 0 and math.isfinite(v)):
            raise UsageError(f"--replay speeds must be positive numbers (got {v:g})")
    if sv.traffic != "gsm8k" and not sv.traffic.startswith("synthetic:") and not Path(sv.traffic).is_file():
        raise UsageError(f"--traffic {sv.traffic}: no such file (give gsm8k, a .jsonl or ShareGPT .json file, or "
                         f"synthetic:in=...,out=...)")
    if sv.level_kind == "replay" and sv.traffic == "gsm8k":
        raise UsageError("--replay replays a traffic file's timestamps: give --traffic FILE.jsonl with timestamps")
    if cfg.sampling.n != 1:
        raise UsageError("--n > 1 is for offline runs; a serving run sends one request per answer")
    if cfg.sharding != "contiguous" or cfg.chunk_size:
        raise UsageError("--sharding and --chunk-size are for offline runs; serving routes each request "
                         "to the least busy replica")


def check_config(cfg: RunConfig) -> None:
    """Everything about a run's settings that can be known before an engine starts."""
    try:
        check_installed(cfg.engine)
    except EngineNotAvailable as e:
        raise UsageError(str(e)) from None
    why = cannot(cfg.engine, cfg.workload, cfg.tp, cfg.device)
    if why:
        raise UsageError(why)
    check_layout(cfg)
    for name in ("limit", "chunk_size", "max_model_len"):
        _at_least("--" + name.replace("_", "-"), getattr(cfg, name))
    if cfg.sharding not in SHARDING_MODES:
        raise UsageError(f"--sharding {cfg.sharding!r}: choose from {', '.join(SHARDING_MODES)}")
    if cfg.replica_timeout_s is not None and not cfg.replica_timeout_s > 0:
        raise UsageError(f"--replica-timeout must be positive (got {cfg.replica_timeout_s})")
    if not 0 < cfg.cpu_memory_fraction <= 0.95:
        raise UsageError(f"--cpu-memory-fraction must be in (0, 0.95] (got {cfg.cpu_memory_fraction})")
    if not isinstance(cfg.engine_kwargs, dict):
        raise UsageError("--engine-kwargs must be a JSON object, e.g. '{\"enforce_eager\": true}'")
    why = layout_kwarg_problem(cfg.engine, cfg.engine_kwargs)
    if why:
        raise UsageError(why)
    check_sampling(cfg)
    why = deterministic_problem(cfg.engine, cfg.device) if cfg.deterministic else None
    why = why or (quantization_problem(cfg.engine, cfg.engine_kwargs["quantization"], cfg.device)
                  if cfg.engine_kwargs.get("quantization") and not Path(cfg.model).is_file() else None)
    if why:
        raise UsageError(why)
    if cfg.workload == "serve":
        check_serve(cfg)
    elif cfg.workload != "offline":
        raise UsageError(f"--workload {cfg.workload!r}: choose offline or serve")
    if cfg.tokenizer is None and Path(cfg.model).is_file():
        raise UsageError(f"--model {cfg.model} is a checkpoint file: give --tokenizer, the folder of the model it was "
                         f"made from (config and tokenizer)")
    why = loads_problem(cfg.engine, cfg.model, cfg.device)
    if why:
        raise UsageError(why)
    model = model_config(cfg.model_folder) or {}
    heads = model.get("num_attention_heads")
    if heads and heads % cfg.tp:
        raise UsageError(f"tp={cfg.tp} does not divide the model's {heads} attention heads")
    if cfg.device == "cuda":
        check_gpu_fit(cfg.model, cfg.tp)
    check_fits(cfg)


def check_layout(cfg: RunConfig) -> None:
    """The layout against the backend's capabilities (each axis), the data-parallel backend's own
    rules, and the devices this host has."""
    layout = cfg.layout
    why = layout_problem(cfg.engine, layout, cfg.workload)
    if why:
        raise UsageError(why)
    if layout.native:
        if layout.dp < 2 or layout.mode != "dp":
            raise UsageError("--dp-backend native needs --mode dp with --gpus 2 or more")
        if cfg.device == "cpu":
            raise UsageError("--dp-backend native needs GPUs")
    if layout.routed and layout.dp < 2:
        raise UsageError("--dp-backend router puts 2 or more servers behind the router: give --mode dp --gpus N "
                         "(or --mode hybrid --dp D --tp T) with N, D >= 2")
    _at_least("--cpu-cores-per-device", cfg.cpu_cores_per_device)
    if cfg.ray_address is None:
        visible = gpu_count() if cfg.device == "cuda" else cpu_device_count(cfg.cpu_cores_per_device)
        unit = "GPU(s)" if cfg.device == "cuda" else f"CPU device(s) of {cfg.cpu_cores_per_device} core(s)"
        if layout.devices > visible:
            raise UsageError(f"layout needs {layout.devices} devices but only {visible} {unit} are visible")


def check_gpu_fit(model: str, tp: int) -> None:
    """Refuse a layout whose replica cannot even hold the weights; warn where NCCL needs help."""
    found = gpus()
    weights, gib = weight_bytes(model), min((g.memory_gib for g in found), default=None)
    if weights and gib and weights / tp > 0.9 * gib * 2**30:
        raise UsageError(f"the model's weights ({weights / 2**30:.1f} GiB) do not fit in tp={tp} GPU(s) of "
                         f"{gib:.0f} GiB each (leaving room for the KV cache); use a larger --tp")
    missing = gpus_without_p2p(tp)
    if missing and "NCCL_P2P_DISABLE" not in os.environ:
        pairs = ", ".join(f"{i}-{j}" for i, j in missing)
        print(f"warning: GPU pair(s) {pairs} lack peer-to-peer access; if tensor parallel hangs or crawls, "
              f"run with NCCL_P2P_DISABLE=1", file=sys.stderr)


def check_run_dir(output_dir: str, run_id: str) -> Path:
    """OUTPUT_DIR/RUN_ID, refusing a run id that is not one plain folder name inside it."""
    if not run_id or run_id in (".", "..") or "/" in run_id or "\\" in run_id or "\0" in run_id \
            or run_id.startswith("-"):
        raise UsageError(f"--run-id {run_id!r} must be one plain folder name (no '/', not '.' or '..')")
    out = Path(output_dir)
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir {output_dir} is not writable")
    path = out / run_id
    if path.resolve().parent != out.resolve():
        raise UsageError(f"--run-id {run_id!r} would write outside --output-dir {output_dir}")
    if path.exists() and any(path.iterdir()):
        raise UsageError(f"{path} already exists; use --resume {path} or another --run-id")
    return path


def check_lengths(prompts: list[Prompt], cfg: RunConfig) -> None:
    """Refuse prompts that cannot fit the context with --max-tokens new tokens: the engine would
    reject them only after minutes of start-up. prompt_tokens counts the token ids the engines are
    given (evaluator.data), exactly what they will see: no BOS is added on top."""
    limit = context_length(cfg)
    if not limit or not prompts:
        return
    longest = max(prompts, key=lambda p: p.prompt_tokens)
    too_long = [p for p in prompts if p.prompt_tokens + cfg.sampling.max_tokens > limit]
    if too_long:
        raise UsageError(f"{len(too_long)} prompt(s) cannot fit the context of {limit} tokens with --max-tokens "
                         f"{cfg.sampling.max_tokens} (the longest, index {longest.index}, has {longest.prompt_tokens} "
                         f"tokens); lower --max-tokens or raise --max-model-len")
