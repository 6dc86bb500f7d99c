"""Hugging Face transformers reference engine: the slow, trusted backend that answers "does the fast
engine give the reference answers?". One AutoModelForCausalLM on one device, model.generate in
left-padded batches; no server, no tensor parallelism, nothing compiled.

It applies exactly the run's SamplingConfig, as vLLM applies exactly the SamplingParams it is
given: the model's generation_config.json contributes its stop tokens and nothing else (a Qwen
checkpoint's own temperature, top_k and repetition_penalty would otherwise slip into "greedy").
Token counts follow vLLM's: completion_tokens includes the stop token the answer ended on, the
text leaves special tokens out. ignore_eos also means what it means there: nothing stops the
answer before max_tokens, and stop tokens are drawn like any other token (not masked out).

    python -m evaluator --engine hf --mode single --device cpu --model models/tiny --workload offline \
        --engine-kwargs '{"dtype": "float32", "batch_size": 8}'
"""
from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any, Sequence

from evaluator.records import Completion, SamplingConfig
from launchers.engines.base import Capabilities, EngineSettings, EngineSpec, RequestRejected, ServerLaunch, StartFacts

NATIVE_DP: tuple[str, ...] = ()
# what it is rather than a setting: model.generate runs eager with transformers' default attention (sdpa),
# static batches, no chunked prefill and no prefix cache, the KV cache in the model's dtype
FIXED = ("cuda_graphs", "torch_compile", "attention", "chunked_prefill", "chunked_prefill_tokens", "prefix_caching",
         "kv_cache_dtype")
CAPABILITIES = Capabilities(workloads=("offline",), native_dp=(), tensor_parallel=False, devices=("cuda", "cpu"),
                            reference=True, fixed_settings=FIXED)

# the engine kwargs this backend reads (there is no engine of another name to pass the rest to)
DEFAULT_KWARGS: dict[str, Any] = {"dtype": "auto", "batch_size": 16}
DTYPES = ("auto", "float32", "bfloat16", "float16")


def engine_env(spec: EngineSpec, serving: bool = False) -> dict[str, str]:
    return {}


def cache_dirs(spec: EngineSpec) -> list[Path]:
    """Nothing is compiled: every start is the same."""
    return []


def read_log(lines: list[str]) -> StartFacts:
    """transformers logs nothing about compile state, KV cache or weights."""
    return StartFacts()


def settings(spec: EngineSpec) -> EngineSettings:
    """What the reference engine runs with: the fixed ones (FIXED), its batch size and the dtype
    resolve_dtype picks (read from config.json here, without importing transformers)."""
    options = {**DEFAULT_KWARGS, **spec.engine_kwargs}
    dtype = options.get("dtype")
    if dtype == "auto":
        try:
            config = json.loads((Path(spec.model) / "config.json").read_text())
            dtype = config.get("dtype") or config.get("torch_dtype")
        except (OSError, ValueError):
            dtype = None
        dtype = dtype or ("bfloat16" if spec.device == "cuda" else "float32")
    given = tuple(n for k, n in (("batch_size", "max_batch"), ("dtype", "dtype")) if k in spec.engine_kwargs)
    return EngineSettings(cuda_graphs=False, torch_compile=False, attention="sdpa", max_batch=options.get("batch_size"),
                          chunked_prefill=False, prefix_caching=False, quantization="none", dtype=dtype,
                          kv_cache_dtype="auto", context_tokens=spec.max_model_len,
                          given=given + (("context_tokens",) if spec.max_model_len else ()))


def deterministic_problem(device: str) -> str | None:
    return "the hf reference engine has no deterministic (batch-invariant) mode: --deterministic would change nothing"


def quantization_problem(method: str, device: str) -> str | None:
    return f"the hf reference engine runs the checkpoint as stored (no online quantisation such as {method})"


def engine_options(spec: EngineSpec) -> dict[str, Any]:
    """spec.engine_kwargs over the defaults; an unknown key or a bad value is refused, since here
    it would otherwise be dropped without a word."""
    unknown = sorted(set(spec.engine_kwargs) - set(DEFAULT_KWARGS))
    if unknown:
        raise ValueError(f"the hf engine does not know engine kwarg(s) {', '.join(map(repr, unknown))}; "
                         f"it accepts: {', '.join(DEFAULT_KWARGS)}")
    options = {**DEFAULT_KWARGS, **spec.engine_kwargs}
    if options["dtype"] not in DTYPES:
        raise ValueError(f"hf engine dtype {options['dtype']!r}; choose from {', '.join(DTYPES)}")
    batch_size = options["batch_size"]
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"hf engine batch_size {batch_size!r}: a whole number of prompts, at least 1")
    return options


def resolve_dtype(name: str, model: str, device: str):
    """"auto": the checkpoint's own dtype (config.json), else bfloat16 on cuda and float32 on cpu."""
    import torch
    if name != "auto":
        return getattr(torch, name)
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(model, local_files_only=True)
    found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(found, str):
        found = getattr(torch, found, None)
    if isinstance(found, torch.dtype):
        return found
    return torch.bfloat16 if device == "cuda" else torch.float32


def _as_list(ids) -> list[int]:
    if ids is None:
        return []
    return [int(i) for i in ids] if isinstance(ids, (list, tuple)) else [int(ids)]


class HFEngine:
    def __init__(self, spec: EngineSpec):
        if spec.tp != 1 or spec.native_dp != 1:
            raise ValueError(f"the hf reference engine has no tensor parallelism or data parallelism of its own "
                             f"(tp={spec.tp}, native_dp={spec.native_dp}): it runs one device per engine; "
                             f"use single or Ray DP layouts")
        if spec.device not in ("cuda", "cpu"):
            raise ValueError(f"the hf engine runs on cuda or cpu, not {spec.device!r}")
        options = engine_options(spec)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
        if spec.device == "cpu":
            # the replica pins this process to its cores; torch's default thread count ignores that pinning
            torch.set_num_threads(len(os.sched_getaffinity(0)))
        self.device = spec.device
        self.batch_size: int = options["batch_size"]
        self.dtype = resolve_dtype(options["dtype"], spec.model, spec.device)
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model, local_files_only=True)
        self.tokenizer.padding_side = "left"        # new tokens follow the prompt in every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # device_map: the weights go straight to the device, not through host memory first
        self.model = AutoModelForCausalLM.from_pretrained(spec.model, dtype=self.dtype, device_map=spec.device,
                                                          local_files_only=True).eval()
        own = self.model.generation_config
        stops = _as_list(own.eos_token_id) + _as_list(self.tokenizer.eos_token_id)
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys(stops))
        pad = own.pad_token_id if own.pad_token_id is not None else self.tokenizer.pad_token_id
        # only the stop and pad tokens are kept from the checkpoint's generation config (see the docstring)
        self.model.generation_config = GenerationConfig(eos_token_id=list(self.stop_ids), pad_token_id=pad,
                                                        bos_token_id=own.bos_token_id)
        # unseeded sampling draws from the process's stream, seeded once like vLLM's engine seed
        torch.manual_seed(spec.seed)

    # --- generation -----------------------------------------------------------------------------
    def _settings(self, params: SamplingConfig, n: int) -> dict[str, Any]:
        # ignore_eos as vLLM and SGLang mean it: no token stops the answer, stop tokens are still
        # drawn like any other. (min_new_tokens would mask them instead: the answer would turn
        # away from the fast engines' at the first place the model chose to stop.)
        stops = [] if params.ignore_eos else list(self.stop_ids)
        settings: dict[str, Any] = {"max_new_tokens": params.max_tokens, "eos_token_id": stops,
                                    "pad_token_id": self.model.generation_config.pad_token_id,
                                    "repetition_penalty": params.repetition_penalty, "num_return_sequences": n}
        if params.temperature == 0:
            settings["do_sample"] = False
        else:
            settings.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                            top_k=params.top_k if params.top_k > 0 else 0)     # 0: transformers' "off"
        return settings

    def _run(self, ids: list[list[int]], settings: dict[str, Any], n: int) -> list[list[list[int]]]:
        """New token ids of each row (n per prompt), cut after the first stop token (transformers
        returns it, then pads the row until the batch ends)."""
        import torch
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**batch, **settings)
        new = out[:, batch["input_ids"].shape[1]:].tolist()
        stops = set(settings["eos_token_id"])
        rows = []
        for row in new:
            end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            rows.append(row[:end])
        return [rows[i * n:(i + 1) * n] for i in range(len(ids))]

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingConfig,
                 seeds: list[int] | None = None) -> list[Completion]:
        import torch
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        ids = [list(p) for p in prompts]            # the model's input as given: nothing added
        empty = [i for i, row in enumerate(ids) if not row]
        if empty:
            raise RequestRejected(f"the hf engine cannot answer an empty prompt (prompt {empty[0]} has no tokens)")
        sampling = params.temperature != 0
        # greedy answers are the same n times over: generate one, as vLLM's n greedy answers agree
        n_run = params.n if sampling else 1
        settings = self._settings(params, n_run)
        answers: list[list[list[int]] | None] = [None] * len(prompts)
        if sampling and seeds is not None:
            # transformers' sampling takes no per-row generator, so each seeded prompt runs alone under
            # its own seed: its answers then cannot depend on which prompts share its batch
            for i, seed in enumerate(seeds):
                with torch.random.fork_rng(devices=[torch.cuda.current_device()] if self.device == "cuda" else []):
                    torch.manual_seed(seed)
                    answers[i] = self._run([ids[i]], settings, n_run)[0]
        else:
            # longest first, so batches hold prompts of similar length (less padding) and a batch that
            # does not fit in memory fails at once; left padding keeps the answers those of each alone
            order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                for i, rows in zip(chunk, self._run([ids[i] for i in chunk], settings, n_run), strict=True):
                    answers[i] = rows
        result = []
        for prompt_ids, rows in zip(ids, answers, strict=True):
            rows = rows if sampling else rows * params.n
            texts = tuple(self.tokenizer.decode(r, skip_special_tokens=True) for r in rows)
            result.append(Completion(texts=texts, prompt_tokens=len(prompt_ids),
                                     completion_tokens=sum(len(r) for r in rows)))
        return result

    def close(self) -> None:
        model, self.model = getattr(self, "model", None), None
        if model is None:
            return
        del model
        gc.collect()
        if self.device == "cuda":
            import torch
            torch.cuda.empty_cache()


ENGINE = HFEngine


def server_launch(spec: EngineSpec, port: int, host: str, api_key: str | None = None) -> ServerLaunch:
    raise NotImplementedError("the hf reference engine has no server; use --workload offline")
