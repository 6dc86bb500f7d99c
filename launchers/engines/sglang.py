"""SGLang backend: offline, one sglang.Engine with tp_size=tp and dp_size=1 (our Ray actors do DP),
or dp_size=D when the run asks for SGLang's own data parallelism (--dp-backend native); serving,
SGLang's launch_server with the same settings (--dp-size D behind one endpoint for native DP).

Nothing that changes speed is set here; the offline GPU bundle's needs (sampling_backend,
attention_backend) go through --engine-kwargs in SGLang's own names.

    python -m evaluator --engine sglang --mode dp --gpus 2 --engine-kwargs '{"attention_backend": "triton"}'
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from evaluator.records import Completion, SamplingConfig
from launchers.engines.base import EngineSpec, RequestRejected, ServerLaunch, cli_flags, free_port, python_module

NATIVE_DP = ("offline", "serve")


def engine_env(spec: EngineSpec) -> dict[str, str]:
    return {}


def engine_kwargs(spec: EngineSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"model_path": spec.model, "tp_size": spec.tp, "dp_size": spec.native_dp,
                              "random_seed": spec.seed}
    if spec.max_model_len:
        kwargs["context_length"] = spec.max_model_len
    if spec.device == "cpu":
        kwargs["device"] = "cpu"
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
        # a free port per engine, so two runs (or two replicas) on one node do not collide on
        # SGLang's fixed default; its NCCL ports it already picks free itself, one per DP rank
        # (a fixed nccl_port made its native DP fail: every rank tried to bind the same one)
        self.engine = sgl.Engine(**{"port": free_port(), **engine_kwargs(spec)})

    def generate(self, prompts: list[str], params: SamplingConfig, seeds: list[int] | None = None) -> list[Completion]:
        # n answers per prompt are asked as n copies of the prompt: SGLang's offline engine
        # flattens n>1 outputs, and copies keep the grouping explicit.
        n = params.n
        flat = [p for p in prompts for _ in range(n)]
        if seeds is None:
            sp: Any = sampling_params(params, None)
        else:
            sp = [sampling_params(params, s * n + k) for s in seeds for k in range(n)]
        try:
            outs = self.engine.generate(prompt=flat, sampling_params=sp)
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


def server_launch(spec: EngineSpec, port: int, host: str) -> ServerLaunch:
    kwargs = {k: v for k, v in engine_kwargs(spec).items() if k != "model_path"}
    return ServerLaunch(argv=(*python_module("sglang.launch_server"), "--model-path", spec.model, "--host", host,
                              "--port", str(port), *cli_flags(kwargs, negatable=False)),
                        # /health answers from the server's state instead of running a generation, which
                        # under load could outlast the load client's probe and mark a live server dead
                        env={"SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION": "false"}, port=port, health_path="/health",
                        model_name=spec.model)


def cache_dirs(spec: EngineSpec) -> list[Path]:
    """SGLang compiles Triton kernels (its triton attention backend) into Triton's cache."""
    return [Path(os.environ.get("TRITON_CACHE_DIR", os.path.expanduser("~/.triton/cache")))]
