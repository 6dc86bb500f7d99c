"""Command line of one evaluation run: parse, refuse bad input before anything is started or
written, then run and print the table.

    python -m evaluator --engine vllm --mode dp --gpus 2 --model models/qwen2.5-coder-0.5b-instruct \
        --data data/gsm8k_test.parquet --limit 64 --max-tokens 256
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

from evaluator.layout import (MODES, LayoutError, cpu_device_count, cuda_device_count, detect_device, gpu_memory_gib,
                              gpus_without_p2p, resolve, weight_bytes)
from evaluator.records import RunConfig, SamplingConfig
from evaluator.sharding import SHARDING_MODES
from launchers.engines.base import ENGINES, EngineNotAvailable, check_installed


class UsageError(ValueError):
    """Bad input: printed as one line, exit code 2, nothing written."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage block), still exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m evaluator",
        description="Evaluate one serving layout (dp replicas x tp devices each) of vLLM or SGLang on "
                    "GSM8K: start-up time, generate time, throughput and strict/flexible accuracy.",
        epilog="Example: python -m evaluator --engine vllm --mode dp --gpus 2 --model Qwen/Qwen2.5-7B-Instruct "
               "--data data/gsm8k_test.parquet. Resume an interrupted run: python -m evaluator --resume results/RUN_ID. "
               "Compare finished runs: python -m evaluator.report results/",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("layout")
    g.add_argument("--engine", choices=sorted(ENGINES), default="vllm", help="inference engine")
    g.add_argument("--mode", choices=MODES, default="single",
                   help="single = 1 device; dp = GPUS replicas of 1 device; tp = 1 replica of GPUS devices; "
                        "hybrid = DP replicas of TP devices (DP x TP = GPUS)")
    g.add_argument("--gpus", type=int, default=1, help="devices the layout uses (on a host without GPU: groups of "
                                                        "--cpu-cores-per-device cores)")
    g.add_argument("--dp", type=int, help="replicas, for --mode hybrid")
    g.add_argument("--tp", type=int, help="devices per replica, for --mode hybrid")
    g.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto = cuda when a GPU is visible, else cpu")
    g.add_argument("--dp-backend", choices=("ray", "native"), default="ray",
                   help="ray = one engine per Ray actor (our DP); native = one engine using its own dp_size "
                        "(SGLang only)")
    g.add_argument("--cpu-cores-per-device", type=int, default=1, help="CPU cores that make one device on CPU hosts")
    g.add_argument("--cpu-memory-fraction", type=float, default=0.5,
                   help="CPU hosts: fraction of RAM for all engines' KV caches together, split evenly "
                        "(vLLM-CPU's gpu_memory_utilization)")
    g.add_argument("--ray-address", help="join an existing Ray cluster (e.g. started by slurm/ray_cluster.sbatch)")
    d = p.add_argument_group("model and data")
    d.add_argument("--model", default="models/qwen2.5-coder-0.5b-instruct",
                   help="local model folder or hub id (made offline by: python -m datasets_prep model "
                        "qwen2.5-coder-0.5b-instruct)")
    d.add_argument("--data", default="data/gsm8k_test.parquet", help="parquet made by python -m datasets_prep gsm8k")
    d.add_argument("--limit", type=int, help="first N prompts only (default: all)")
    s = p.add_argument_group("sampling")
    s.add_argument("--max-tokens", type=int, default=512, help="maximum new tokens per answer")
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1 = off")
    s.add_argument("--top-k", type=int, default=-1, help="-1 = off")
    s.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    s.add_argument("--seed", type=int, default=0, help="engine seed; with temperature > 0 prompt i uses seed+i, "
                                                       "so answers do not depend on the layout")
    s.add_argument("--n", type=int, default=1, help="answers per prompt; > 1 reports maj@N (needs temperature > 0)")
    s.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens (timing runs)")
    s.add_argument("--max-model-len", type=int, help="engine context length (default: the model's)")
    e = p.add_argument_group("engine and run")
    e.add_argument("--engine-kwargs", default="{}", metavar="JSON",
                   help="extra engine arguments in the engine's own names, e.g. '{\"enforce_eager\": true}'")
    e.add_argument("--sharding", choices=SHARDING_MODES, default="contiguous",
                   help="contiguous = equal counts; balanced = equal prompt tokens; dynamic = shared queue of chunks")
    e.add_argument("--chunk-size", type=int, help="prompts per generate call (default: a replica's whole shard; "
                                                  "dynamic: ~1/8 of it). Smaller flushes to disk sooner but "
                                                  "batches less")
    e.add_argument("--on-replica-failure", choices=("rerun", "fail"), default="rerun",
                   help="rerun = give a dead replica's prompts to the others; fail = stop at once")
    e.add_argument("--replica-timeout", type=float, metavar="S",
                   help="seconds a replica may take to start, or to finish one chunk, before it counts as dead")
    e.add_argument("--output-dir", default="results", help="runs are written to OUTPUT_DIR/RUN_ID/")
    e.add_argument("--run-id", help="name of the run's folder (default: time-engine-mode-DPxTP)")
    e.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run: only missing prompts are generated")
    e.add_argument("--no-table", action="store_true", help="do not print the comparison table at the end")
    e.add_argument("--engine-logs", action="store_true", help="stream the engines' own logs to stderr "
                                                              "(otherwise they stay in Ray's log folder)")
    return p


def _positive(name: str, value, allow_none=True):
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise UsageError(f"{name} must be at least 1 (got {value})")


def _model_heads(model: str) -> int | None:
    """num_attention_heads from the model's config.json; hub ids are read through transformers."""
    path = Path(model)
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise UsageError(f"--model {model} is a folder without config.json: not a model")
        try:
            cfg = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise UsageError(f"--model {model}: config.json is not valid JSON ({e})") from None
        cfg = cfg.get("text_config", cfg)
        return cfg.get("num_attention_heads")
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise UsageError(f"--model {model}: no such model folder (and not a hub id like Qwen/Qwen2.5-7B-Instruct)")
    try:
        from transformers import AutoConfig
        cfg = AutoConfig.from_pretrained(model)
    except Exception as e:  # offline, unknown repo, gated: all mean we cannot check it
        raise UsageError(f"--model {model}: cannot read its config from the hub or cache ({type(e).__name__}); "
                         f"pass a local folder") from None
    return getattr(getattr(cfg, "text_config", cfg), "num_attention_heads", None)


def _check_gpu_fit(model: str, tp: int) -> None:
    """Refuse a layout whose replica cannot even hold the weights; warn where NCCL needs help."""
    weights, gib = weight_bytes(model), gpu_memory_gib()
    if weights and gib and weights / tp > 0.9 * gib * 2**30:
        raise UsageError(f"the model's weights ({weights / 2**30:.1f} GiB) do not fit in tp={tp} GPU(s) of "
                         f"{gib:.0f} GiB each (leaving room for the KV cache); use a larger --tp")
    missing = gpus_without_p2p(tp)
    if missing and "NCCL_P2P_DISABLE" not in os.environ:
        pairs = ", ".join(f"{i}-{j}" for i, j in missing)
        print(f"warning: GPU pair(s) {pairs} lack peer-to-peer access; if tensor parallel hangs or crawls, "
              f"run with NCCL_P2P_DISABLE=1", file=sys.stderr)


def _writable(output_dir: str) -> None:
    path = Path(output_dir)
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir {output_dir} is not writable")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Every check that needs no engine: layout, devices, model, numbers, JSON."""
    try:
        check_installed(args.engine)
    except EngineNotAvailable as e:
        raise UsageError(str(e)) from None
    try:
        layout = resolve(args.mode, args.gpus, args.dp, args.tp)
    except LayoutError as e:
        raise UsageError(str(e)) from None
    device = detect_device(args.device)
    if args.ray_address is None:
        visible = cuda_device_count() if device == "cuda" else cpu_device_count(args.cpu_cores_per_device)
        unit = "GPU(s)" if device == "cuda" else f"CPU device(s) of {args.cpu_cores_per_device} core(s)"
        if layout.devices > visible:
            raise UsageError(f"layout needs {layout.devices} devices but only {visible} {unit} are visible")
    if args.dp_backend == "native" and args.engine != "sglang":
        raise UsageError("--dp-backend native is for SGLang; vLLM's DP here is one engine per Ray actor")
    if args.dp_backend == "native" and device == "cpu":
        raise UsageError("--dp-backend native needs GPUs (SGLang)")
    for name in ("limit", "max_tokens", "n", "cpu_cores_per_device", "chunk_size", "max_model_len"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    if args.replica_timeout is not None and args.replica_timeout <= 0:
        raise UsageError(f"--replica-timeout must be positive (got {args.replica_timeout})")
    if args.n > 1 and args.temperature <= 0:
        raise UsageError("--n > 1 needs --temperature > 0 (greedy answers would all be the same)")
    if not 0 < args.cpu_memory_fraction <= 0.95:
        raise UsageError(f"--cpu-memory-fraction must be in (0, 0.95] (got {args.cpu_memory_fraction})")
    try:
        engine_kwargs = json.loads(args.engine_kwargs)
    except json.JSONDecodeError as e:
        raise UsageError(f"--engine-kwargs is not valid JSON: {e}") from None
    if not isinstance(engine_kwargs, dict):
        raise UsageError("--engine-kwargs must be a JSON object, e.g. '{\"enforce_eager\": true}'")
    heads = _model_heads(args.model)
    if heads and heads % layout.tp:
        raise UsageError(f"tp={layout.tp} does not divide the model's {heads} attention heads")
    if device == "cuda":
        _check_gpu_fit(args.model, layout.tp)
    _writable(args.output_dir)
    model = str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model
    return RunConfig(
        engine=args.engine, mode=args.mode, gpus=args.gpus, dp=layout.dp, tp=layout.tp, model=model,
        data=str(Path(args.data).resolve()), device=device,
        sampling=SamplingConfig(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed,
                                n=args.n, ignore_eos=args.ignore_eos),
        limit=args.limit, max_model_len=args.max_model_len, engine_kwargs=engine_kwargs,
        cpu_cores_per_device=args.cpu_cores_per_device, cpu_memory_fraction=args.cpu_memory_fraction,
        sharding=args.sharding, chunk_size=args.chunk_size, dp_backend=args.dp_backend,
        on_replica_failure=args.on_replica_failure, replica_timeout_s=args.replica_timeout,
        ray_address=args.ray_address, engine_logs=args.engine_logs)


def default_run_id(cfg: RunConfig) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    native = "-native" if cfg.dp_backend == "native" else ""
    return f"{stamp}-{cfg.engine}-{cfg.mode}-{cfg.layout}{native}"
