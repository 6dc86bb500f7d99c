"""SGLang backend: offline, one sglang.Engine with tp_size=tp and dp_size=1 (our Ray actors do DP),
or dp_size=D when the run asks for SGLang's own data parallelism (--dp-backend native); serving,
SGLang's launch_server with the same settings (--dp-size D behind one endpoint for native DP).

Nothing that changes speed is set here; the offline GPU bundle's needs (sampling_backend,
attention_backend) go through --engine-kwargs in SGLang's own names.

    python -m evaluator --engine sglang --mode dp --gpus 2 --engine-kwargs '{"attention_backend": "triton"}'
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

from evaluator.records import Completion, SamplingConfig
from launchers.engines.base import (Capabilities, EngineSettings, EngineSpec, RequestRejected, ServerLaunch,
                                    StartFacts, cli_flags, counter, free_port, gauge, given_settings, log_setting,
                                    python_module)

CAPABILITIES = Capabilities(
    workloads=("offline", "serve"),
    native_dp=("offline", "serve"),
    tensor_parallel=True,
    devices=("cuda",),
    layout_kwargs={"tp_size": "--mode tp --gpus N (or --mode hybrid --dp D --tp T)",
                   "tensor_parallel_size": "--mode tp --gpus N",
                   "dp_size": "--mode dp --gpus N (--dp-backend native for SGLang's own DP)",
                   "data_parallel_size": "--mode dp --gpus N",
                   "pp_size": "a layout without pipeline parallelism (not measured by this tool)",
                   "pipeline_parallel_size": "a layout without pipeline parallelism (not measured by this tool)",
                   "ep_size": "a layout without expert parallelism (not measured by this tool)",
                   "nnodes": "--ray-address (a replica's devices are on one node)"},
    # sglang/srt/observability/metrics_collector.py (0.5.17). The scheduler's gauges carry tp_rank,
    # pp_rank, dp_rank (native DP): one label set per DP rank's scheduler (its first TP rank exports
    # them); with priority scheduling the total is the label set priority="" and each priority has its
    # own. The tokenizer's counters (prompt, cached tokens, TTFT) and the retraction counter are created
    # at their first increment (lazy: a label set that appears mid-level counts from 0).
    # sglang:num_retracted_reqs is a gauge of the last retraction's size, reset at the next stats log,
    # not a count: the counter sglang:num_retracted_requests_total is used instead.
    metrics={"running": gauge("sglang:num_running_reqs", where=(("priority", ""),)),
             "waiting": gauge("sglang:num_queue_reqs", where=(("priority", ""),)),
             "kv_usage": gauge("sglang:token_usage", combine="max"),
             "preemptions": counter("sglang:num_retracted_requests_total", lazy=True),
             "prefix_queries": counter("sglang:prompt_tokens_total", lazy=True),   # prompt tokens of finished requests
             "prefix_hits": counter("sglang:cached_tokens_total", lazy=True),      # of them found cached (every cache_source)
             "prefix_hit_rate": gauge("sglang:cache_hit_rate", combine="mean"),    # last stats interval's; used without the counters
             "ttft_sum": counter("sglang:time_to_first_token_seconds_sum", lazy=True),
             "ttft_count": counter("sglang:time_to_first_token_seconds_count", lazy=True),
             "kv_tokens": gauge("sglang:max_total_num_tokens")},
)

# what SGLang's own start-up log says (0.5.17, the same lines offline and serving once the offline
# engine logs at the server's level): the scheduler's pool (managers/scheduler.py, TP rank 0 of each
# DP rank), the weights (model_executor/model_runner.py), and its piecewise torch.compile backend
# compiling (compilation/backend.py, which has no path that loads a compiled graph from a cache: a
# start that uses it always compiles). Capturing CUDA graphs ("Capture ... CUDA graph begin") is not
# a compile cache; with --enable-torch-compile torch.compile runs inside that capture and SGLang says
# nothing about a cache either way.
_KV = re.compile(r"max_total_num_tokens=(\d+)")
_WEIGHTS = re.compile(r"Load weight end\..*?mem usage=([\d.]+) GB")
_COLD = ("Compiling a graph for",)
_TORCH_COMPILE = "enable_torch_compile=True"      # in the server_args=ServerArgs(...) line every start logs
OFFLINE_LOG_LEVEL = "info"     # sglang.Engine's own default is "error" ("Do not print logs by default")
_SERVER_ARGS = re.compile(r"server_args=ServerArgs\((.*)")
_SCHEDULER = re.compile(r"max_total_num_tokens=\d+.*")
_WEIGHTS_DTYPE = re.compile(r"Load weight end\..*?dtype=torch\.(\w+)")
_CAPTURE = "Capture cuda graph"        # "Capture cuda graph begin. This can take up to several minutes."

# SGLang's engine kwargs (ServerArgs fields) -> the EngineSettings they set
SETTING_KWARGS = {"disable_cuda_graph": ("cuda_graphs",), "enable_torch_compile": ("torch_compile",),
                  "attention_backend": ("attention",), "max_running_requests": ("max_batch",),
                  "chunked_prefill_size": ("chunked_prefill", "chunked_prefill_tokens"),
                  "disable_radix_cache": ("prefix_caching",),
                  "quantization": ("quantization",), "dtype": ("dtype",), "kv_cache_dtype": ("kv_cache_dtype",),
                  "context_length": ("context_tokens",)}


def default_mem_fraction(spec: EngineSpec, device_bytes: int) -> float:
    """SGLang 0.5.17's own default (ServerArgs._handle_gpu_memory_settings): the static fraction
    (weights + KV pool) is what is left after reserving 512 MB + 1.5 MB per token of the chunked
    prefill (8192 tokens from 60 GB up, else 2048-4096) + tp/8 GB + 2 MB per decode CUDA-graph batch
    size (256), at least 10 GB on devices over 60 GB."""
    gpu_mb = device_bytes / 2**20
    chunk = 8192 if gpu_mb >= 60 * 1024 else 4096 if gpu_mb >= 35 * 1024 else 2048
    max_bs = 256 if gpu_mb >= 60 * 1024 else 32
    reserved = 512 + max(chunk, 2048) * 1.5 + spec.tp / 8 * 1024 + max_bs * 2
    if gpu_mb > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    return round((gpu_mb - reserved) / gpu_mb, 3)


CONTEXT_BYTES = int(0.5 * 2**30)      # the CUDA context and NCCL outside torch's pool, per device


def kv_budget(spec: EngineSpec, model: dict, device_bytes: int, weights_per_device: float) -> tuple[float, str]:
    """SGLang's KV pool per device: mem_fraction_static x the device's memory (weights and KV pool
    together), minus the weights and the context outside torch (ModelRunner: rest_memory)."""
    frac = float(spec.engine_kwargs.get("mem_fraction_static") or default_mem_fraction(spec, device_bytes))
    budget = device_bytes * frac - weights_per_device - CONTEXT_BYTES
    return budget, f"SGLang: mem_fraction_static {frac:g} x {device_bytes / 2**30:.1f} GiB - weights - 0.5 GiB context"


def read_log(lines: list[str]) -> StartFacts:
    """Compile state, settings (log_settings), KV-cache tokens (max_total_num_tokens, once per
    scheduler: a native-DP engine has one per rank, summed) and the weights' memory from SGLang's
    start-up log. Compile state:
    cold where its torch.compile backend compiled; none where the start was logged without it (its
    Triton kernels are JIT-compiled into Triton's own cache, which SGLang does not mention); None
    (unknown: the cache folders' measurement stays) with --enable-torch-compile, or no log."""
    text = "\n".join(lines)
    kv = [int(m) for m in _KV.findall(text)]
    weights = [float(m) for m in _WEIGHTS.findall(text)]
    if any(m in text for m in _COLD):
        compile_state = "cold"
    elif _TORCH_COMPILE in text or not kv:
        compile_state = None
    else:
        compile_state = "none"
    return StartFacts(compile=compile_state, kv_cache_tokens=sum(kv) if kv else None,
                      weights_gib=max(weights) if weights else None, settings=log_settings(text))


def server_info_facts(info: dict[str, Any]) -> StartFacts:
    """KV-cache tokens and weights as sglang.Engine.get_server_info() reports them, whatever the
    log level: "internal_states" holds each DP rank's memory_usage (token_capacity, weight in GB;
    managers/scheduler_components/memory_usage.py); without it, "max_total_num_tokens" is the first
    scheduler's (the DP controller's first rank's) times the DP ranks."""
    usage = [s.get("memory_usage") or {} for s in info.get("internal_states") or [] if isinstance(s, dict)]
    tokens = [int(u["token_capacity"]) for u in usage if u.get("token_capacity")]
    weights = [float(u["weight"]) for u in usage if u.get("weight") is not None]
    if not tokens and info.get("max_total_num_tokens"):
        tokens = [int(info["max_total_num_tokens"]) * int(info.get("dp_size") or 1)]
    return StartFacts(kv_cache_tokens=sum(tokens) if tokens else None, weights_gib=max(weights) if weights else None)


def log_settings(text: str) -> EngineSettings | None:
    """What SGLang's log says of its settings: its server_args=ServerArgs(...) line (logged after its
    own defaults were resolved: the attention backend it picked, the chunk size), the scheduler's
    "max_total_num_tokens=..., chunked_prefill_size=..., max_running_requests=..., context_len=..."
    line, the dtype it loaded the weights in and whether it captured CUDA graphs (the offline engine
    logs at OFFLINE_LOG_LEVEL, info, for these lines; at SGLang's default, error, only what was given
    is known)."""
    args, scheduler = _SERVER_ARGS.search(text), _SCHEDULER.search(text)
    loaded = _WEIGHTS_DTYPE.search(text)
    if not (args or scheduler or loaded):
        return None
    found: dict[str, Any] = {}
    if args:
        line = args.group(1)
        no_graphs, compiled = log_setting(line, "disable_cuda_graph", bool), log_setting(line, "enable_torch_compile", bool)
        radix_off, chunk = log_setting(line, "disable_radix_cache", bool), log_setting(line, "chunked_prefill_size", int)
        dtype, quantization = log_setting(line, "dtype"), log_setting(line, "quantization")
        found.update(cuda_graphs=None if no_graphs is None else not no_graphs, torch_compile=compiled,
                     attention=log_setting(line, "attention_backend"),
                     max_batch=log_setting(line, "max_running_requests", int),
                     chunked_prefill=None if chunk is None else chunk > 0,
                     chunked_prefill_tokens=chunk if chunk and chunk > 0 else None,
                     prefix_caching=None if radix_off is None else not radix_off,
                     quantization=quantization or ("none" if "quantization=None" in line else None),
                     dtype=None if dtype == "auto" else dtype, kv_cache_dtype=log_setting(line, "kv_cache_dtype"),
                     context_tokens=log_setting(line, "context_length", int))
    if scheduler:
        line = scheduler.group(0)
        for name, key in (("max_batch", "max_running_requests"), ("context_tokens", "context_len")):
            value = log_setting(line, key, int)
            if value is not None:
                found[name] = value
        chunk = log_setting(line, "chunked_prefill_size", int)
        if chunk is not None:           # -1: SGLang's "off"
            found.update(chunked_prefill=chunk > 0, chunked_prefill_tokens=chunk if chunk > 0 else None)
    if loaded:
        found["dtype"] = loaded.group(1)
    if _CAPTURE in text:
        found["cuda_graphs"] = True
    return EngineSettings(**found)


def settings(spec: EngineSpec) -> EngineSettings:
    """What SGLang will run with before it starts: the kwargs given over its own defaults (CUDA graphs on,
    no torch.compile, the radix prefix cache on, chunked prefill on); the attention backend, the chunk
    size and max_running_requests it picks for the device stay unknown until its log says them."""
    kw = engine_kwargs(spec)
    chunk = kw.get("chunked_prefill_size")
    quantization = kw.get("quantization") or ("gguf" if str(spec.model).endswith(".gguf") else "none")
    given = given_settings({**spec.engine_kwargs, **({"context_length": 1} if spec.max_model_len else {}),
                            **({"quantization": 1} if str(spec.model).endswith(".gguf") else {})}, SETTING_KWARGS)
    return EngineSettings(cuda_graphs=spec.device == "cuda" and not kw.get("disable_cuda_graph"),
                          torch_compile=bool(kw.get("enable_torch_compile")), attention=kw.get("attention_backend"),
                          max_batch=kw.get("max_running_requests"),
                          chunked_prefill=chunk is None or int(chunk) > 0,
                          chunked_prefill_tokens=int(chunk) if chunk is not None and int(chunk) > 0 else None,
                          prefix_caching=not kw.get("disable_radix_cache"), quantization=quantization,
                          dtype=kw.get("dtype") if kw.get("dtype") not in (None, "auto") else None,
                          kv_cache_dtype=kw.get("kv_cache_dtype", "auto"), context_tokens=spec.max_model_len,
                          given=given)


def deterministic_problem(device: str) -> str | None:
    """--enable-deterministic-inference: SGLang's batch-invariant kernels, on its CUDA builds."""
    return None if device == "cuda" else f"SGLang runs on cuda here, not {device}"


def quantization_problem(method: str, device: str) -> str | None:
    """SGLang's online FP8 (quantization="fp8" over a bf16 checkpoint) runs on its CUDA builds; it
    runs no other device here (CAPABILITIES.devices)."""
    if method != "fp8":
        return f"SGLang's online quantisation is compared here for fp8 only (not {method!r})"
    return None if device == "cuda" else f"SGLang runs on cuda here, not {device}"


def engine_env(spec: EngineSpec, serving: bool = False) -> dict[str, str]:
    return {}


def offline_kwargs(spec: EngineSpec) -> dict[str, Any]:
    """sglang.Engine's arguments: a free port per engine, so two runs (or two replicas) on one node
    do not collide on SGLang's fixed default (its NCCL ports it already picks free itself, one per DP
    rank: a fixed nccl_port made its native DP fail, every rank tried to bind the same one); and the
    server's log level, so the offline start-up log says what the server's does (KV-cache tokens,
    weights, compiling: read_log), which sglang.Engine's own "error" keeps silent. The user's wins."""
    return {"port": free_port(), "log_level": OFFLINE_LOG_LEVEL, **engine_kwargs(spec)}


def engine_kwargs(spec: EngineSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"model_path": spec.model, "tp_size": spec.tp, "dp_size": spec.native_dp,
                              "random_seed": spec.seed}
    if spec.max_model_len:
        kwargs["context_length"] = spec.max_model_len
    if spec.device == "cpu":
        kwargs["device"] = "cpu"
    if spec.deterministic:
        kwargs["enable_deterministic_inference"] = True
    kwargs.update(spec.engine_kwargs)
    return kwargs


def sampling_params(params: SamplingConfig, seed: int | None) -> dict[str, Any]:
    d = {"max_new_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
         "top_k": params.top_k, "repetition_penalty": params.repetition_penalty,
         "ignore_eos": params.ignore_eos}
    if seed is not None:
        d["sampling_seed"] = seed
    return d


class SGLangEngine:
    def __init__(self, spec: EngineSpec):
        import sglang as sgl
        self.engine = sgl.Engine(**offline_kwargs(spec))

    def start_facts(self) -> StartFacts:
        """What the engine reports about its start through its API (launchers.engine_host adds it to
        the start's record; its log's word, where there is one, wins)."""
        return server_info_facts(self.engine.get_server_info())

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingConfig,
                 seeds: list[int] | None = None) -> list[Completion]:
        # n answers per prompt are asked as n copies of the prompt: SGLang's offline engine
        # flattens n>1 outputs, and copies keep the grouping explicit. The prompts go as input_ids
        # (lists of ints): text would be encoded again by its tokenizer manager, special tokens added.
        n = params.n
        flat = [list(ids) for ids in prompts for _ in range(n)]
        if seeds is None:
            sp: Any = sampling_params(params, None)
        else:
            sp = [sampling_params(params, s * n + k) for s in seeds for k in range(n)]
        try:
            outs = self.engine.generate(input_ids=flat, sampling_params=sp)
        except ValueError as e:     # SGLang validates sampling params and prompt length with ValueError
            raise RequestRejected(f"SGLang refused the request: {e}") from e
        result = []
        for i in range(len(prompts)):
            group = outs[i * n:(i + 1) * n]
            result.append(Completion(texts=tuple(o["text"] for o in group),
                                     prompt_tokens=int(group[0]["meta_info"]["prompt_tokens"]),
                                     completion_tokens=sum(int(o["meta_info"]["completion_tokens"]) for o in group)))
        return result

    def close(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            engine.shutdown()


ENGINE = SGLangEngine


def server_launch(spec: EngineSpec, port: int, host: str, api_key: str | None = None) -> ServerLaunch:
    """SGLang's launch_server with the offline run's settings, its Prometheus metrics on (the
    per-level running/queued/KV figures come from there), and --api-key when given (SGLang reads it
    from its flags only: the stored argv and the server log have it redacted)."""
    kwargs = {k: v for k, v in engine_kwargs(spec).items() if k != "model_path"}
    kwargs.setdefault("enable_metrics", True)
    if api_key:
        kwargs["api_key"] = api_key
    return ServerLaunch(argv=(*python_module("sglang.launch_server"), "--model-path", spec.model, "--host", host,
                              "--port", str(port), *cli_flags(kwargs, negatable=False)),
                        # /health answers from the server's state instead of running a generation, which
                        # under load could outlast the load client's probe and mark a live server dead
                        env={"SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION": "false"}, port=port, health_path="/health",
                        model_name=spec.model, api_key=api_key)


def cache_dirs(spec: EngineSpec) -> list[Path]:
    """Where SGLang's compiled code lands: Triton's cache (the kernels of its triton attention
    backend, JIT-compiled during start-up's CUDA-graph capture) and, with --enable-torch-compile,
    torch inductor's. A comparison gives such an engine a warm-up start; the start's state comes
    from these folders only where SGLang's log says nothing (read_log)."""
    dirs = [Path(os.environ.get("TRITON_CACHE_DIR", os.path.expanduser("~/.triton/cache")))]
    if spec.engine_kwargs.get("enable_torch_compile"):
        import getpass
        import tempfile
        dirs.append(Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR")
                         or os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")))
    return dirs
