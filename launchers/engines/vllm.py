"""vLLM backend: one vllm.LLM with tensor_parallel_size=tp; vLLM's own data parallelism off.

On CPU builds, gpu_memory_utilization sizes the KV cache as a fraction of RAM, so the replica
passes its share (the run's --cpu-memory-fraction split over all engines). On GPUs nothing that
changes speed is set here: vLLM's defaults apply unless --engine-kwargs says otherwise.

    python -m evaluator --engine vllm --mode tp --gpus 2 --model Qwen/Qwen2.5-7B-Instruct
"""
from __future__ import annotations

import os
from typing import Any

from evaluator.records import Completion, SamplingConfig
from launchers.engines.base import EngineSpec


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


class VLLMEngine:
    def __init__(self, spec: EngineSpec):
        if spec.native_dp != 1:
            raise ValueError("vLLM's own offline data parallelism is not used: DP runs one engine per Ray actor")
        # The replica owns data parallelism; stale VLLM_DP_* variables make vLLM wait for peers.
        for key in [k for k in os.environ if k.startswith("VLLM_DP_")]:
            del os.environ[key]
        from vllm import LLM
        self.llm = LLM(**llm_kwargs(spec))

    def generate(self, prompts: list[str], params: SamplingConfig, seeds: list[int] | None = None) -> list[Completion]:
        outputs = self.llm.generate(prompts, sampling_params(params, seeds), use_tqdm=False)
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
