"""Whether two engines' runs ran like for like: their effective settings (launchers.engines.base
EngineSettings, in neutral names) compared one by one, each difference in words and whether it stops a
ranking. Two kinds of setting. The same for both or no ranking: eager / compiled / CUDA graphs, dtype,
KV-cache dtype, context length, prefix caching, chunked prefill on or off. Tuned by each engine: the
attention backend (by family: FLASH_ATTN and fa3 are both flash-attention), the most sequences at
once, the prefill chunk size: each engine's own default is like for like, a value the run gave is held
against the other's. A setting an engine cannot change (Capabilities.fixed_settings: the hf engine
runs eager) is said, not held against it; so is a value one run gave where the other engine did not
say what it picked.

    python -c "from evaluator.report.likeforlike import compare_settings as c; from launchers.engines.base import EngineSettings as S; print(c('vllm', S(cuda_graphs=False, torch_compile=False), 'sglang', S(cuda_graphs=True)))"
"""
from __future__ import annotations

from dataclasses import dataclass

SAME = ("execution", "dtype", "kv_cache_dtype", "context_tokens", "prefix_caching", "chunked_prefill")
TUNED = ("attention", "max_batch", "chunked_prefill_tokens")
# the EngineSettings.given names behind each compared setting
GIVEN = {"execution": ("cuda_graphs", "torch_compile")}
ATTENTION_FAMILIES = {"flash_attn": "flash-attention", "fa3": "flash-attention", "fa4": "flash-attention",
                      "flash_attention": "flash-attention", "flashinfer": "flashinfer", "triton": "triton",
                      "triton_attn": "triton", "flex_attention": "flex", "sdpa": "torch sdpa",
                      "torch_sdpa": "torch sdpa", "torch_native": "torch sdpa", "cpu_attn": "cpu", "intel_amx": "cpu"}


@dataclass(frozen=True)
class Difference:
    """One compared setting in which two engines' runs differ."""
    setting: str                      # one of SAME + TUNED, or "start"
    text: str                         # "vllm ran eager (given), sglang with CUDA graphs (default)"
    blocking: bool                    # True: the runs cannot be ranked


def _value(settings, name: str):
    if name == "execution":
        return settings.execution
    if name == "chunked_prefill_tokens":        # a size only means something where prefills are chunked
        return settings.chunked_prefill_tokens if settings.chunked_prefill is not False else None
    if name == "kv_cache_dtype":
        return settings.dtype if settings.kv_cache_dtype in (None, "auto") else settings.kv_cache_dtype
    if name == "attention":
        raw = settings.attention
        return None if raw is None else ATTENTION_FAMILIES.get(raw.lower().replace(" ", "_"), raw.lower())
    return getattr(settings, name)


def _given(settings, name: str) -> bool:
    return any(n in settings.given for n in GIVEN.get(name, (name,)))


def _fixed(engine: str) -> tuple[str, ...]:
    from launchers.engines.base import ENGINES, capabilities
    return capabilities(engine).fixed_settings if engine in ENGINES else ()


def _is_fixed(engine: str, name: str) -> bool:
    return any(n in _fixed(engine) for n in GIVEN.get(name, (name,)))


def _describe(name: str, engine: str, settings, first: bool) -> str:
    """One side of a difference: "vllm ran eager", "sglang with CUDA graphs" (first: with the verb)."""
    v = _value(settings, name)
    raw = settings.attention if name == "attention" else v
    text = {
        "execution": lambda: {"eager": "ran eager" if first else "eager", "compiled": "compiled without CUDA graphs",
                              "CUDA graphs": "with CUDA graphs"}.get(v, "?"),
        "dtype": lambda: f"ran in {v}" if first else f"in {v}",
        "kv_cache_dtype": lambda: f"kept its KV cache in {v}" if first else f"in {v}",
        "context_tokens": lambda: f"had a context of {v:,} tokens" if first else f"of {v:,}",
        "prefix_caching": lambda: "cached prompt prefixes" if v else "had no prefix cache",
        "chunked_prefill": lambda: "chunked its prefills" if v else "did not chunk its prefills",
        "attention": lambda: f"used {raw} attention" if first else f"{raw}",
        "max_batch": lambda: f"ran up to {raw} sequences at once" if first else f"up to {raw}",
        "chunked_prefill_tokens": lambda: f"prefilled up to {raw:,} tokens a step" if first else f"{raw:,}",
    }[name]()
    if first and name == "execution" and v == "compiled":
        text = "ran " + text
    if _is_fixed(engine, name):
        why = "by design"
    else:
        why = "given" if _given(settings, name) else "default"
    return f"{engine} {text} ({why})"


def describe_settings(s) -> str:
    """EngineSettings in words: "eager, bfloat16, context 1,024, prefix caching on, chunked prefill of 4,096
    tokens, attention CPU_ATTN, max batch: engine default, no quantisation (given: ...)"."""
    def default(value, text: str, name: str) -> str:
        return text if value is not None else f"{name}: engine default"
    chunk = s.chunked_prefill_tokens
    chunked = (f"chunked prefill of {chunk:,} tokens" if chunk else "chunked prefill") if s.chunked_prefill \
        else "no chunked prefill"
    parts = [s.execution or "eager or graphs: engine default", s.dtype or "the checkpoint's dtype",
             *([f"KV cache in {s.kv_cache_dtype}"] if s.kv_cache_dtype not in (None, "auto") else []),
             f"context {s.context_tokens:,}" if s.context_tokens else "the model's context",
             default(s.prefix_caching, f"prefix caching {'on' if s.prefix_caching else 'off'}", "prefix caching"),
             default(s.chunked_prefill, chunked, "chunked prefill"),
             default(s.attention, f"attention {s.attention}", "attention"),
             default(s.max_batch, f"up to {s.max_batch} sequences at once", "max batch"),
             "no quantisation" if s.quantization in (None, "none") else f"{s.quantization} quantisation"]
    return ", ".join(parts) + (f" (given: {', '.join(s.given)})" if s.given else "")


def compare_settings(engine_a: str, a, engine_b: str, b) -> tuple[Difference, ...]:
    """How two engines' settings (EngineSettings) differ, and whether each difference stops a ranking."""
    out = []
    for name in SAME + TUNED:
        va, vb = _value(a, name), _value(b, name)
        if name in TUNED and (va is None) != (vb is None):
            # one run chose it, the other's engine did not say what it picked: said, not held against them
            (e1, s1), (e2, s2) = ((engine_a, a), (engine_b, b)) if va is not None else ((engine_b, b), (engine_a, a))
            if _given(s1, name):
                out.append(Difference(name, f"{_describe(name, e1, s1, True)}; {e2}'s is not recorded", False))
            continue
        if va is None or vb is None or va == vb:
            continue
        text = f"{_describe(name, engine_a, a, True)}, {_describe(name, engine_b, b, False)}"
        if _is_fixed(engine_a, name) or _is_fixed(engine_b, name):
            blocking = False            # the engine has no other way to run: its nature, not a setting
        elif name in SAME:
            blocking = True
        else:                           # each engine tunes these for itself: only a value the run gave counts
            blocking = _given(a, name) or _given(b, name)
        out.append(Difference(name, text, blocking))
    return tuple(out)
