"""One device's engine, timed step by step: the engine part of a profile. The engine is built
through launchers.engines.base.build in an engine host (as evaluator.bench builds its bare engine),
with the single-device layout's settings and environment, and asked for:

    decode step   B prompts of C tokens, T+1 new tokens each, against the same with 1 new token:
                  (time(T+1) - time(1)) / T = one step of B sequences at context C + T/2
    prefill       time(1) of B prompts of C tokens (their prefill, and one sampled token)
    start-up      building the engine, as the engine host measured it

Every call gets prompts of its own (random vocabulary, so no prefix-cache hit across calls), ignores
EOS, decodes greedily. A batch whose projected call would take longer than max_call_s is left out,
so a slow device profiles in minutes, not an hour. Where the run's answers stop at EOS, the first
prompts of its data are generated with its sampling to learn how long its answers are.

    python -m evaluator.profile --engine vllm --model models/tiny -- --device cpu --max-model-len 1024
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

from rich.console import Console

from evaluator.predict.records import DecodePoint, PrefillPoint, Workload
from evaluator.records import RunConfig, SamplingConfig


@dataclass(frozen=True)
class EngineMeasurements:
    startup_s: float
    kv_cache_tokens: int | None
    decode: tuple[DecodePoint, ...]
    prefill: tuple[PrefillPoint, ...]
    workload: Workload | None


class RandomPrompts:
    """Texts of about n tokens from random ordinary tokens of the model's vocabulary (their exact
    counts come back from the engine)."""

    def __init__(self, tokenizer, seed: int = 0):
        self.tokenizer, self.rng = tokenizer, random.Random(seed)
        special = set(tokenizer.all_special_ids)
        ids = [i for i in range(len(tokenizer)) if i not in special]
        texts = tokenizer.batch_decode([[i] for i in ids])
        self.ids = [i for i, t in zip(ids, texts) if t.strip() and t.isprintable() and "\ufffd" not in t] or ids

    def make(self, count: int, tokens: int) -> list[list[int]]:
        """count prompts as the token ids the engines take (tokenised once, no special tokens)."""
        return [self.tokenizer.encode(self.one(tokens), add_special_tokens=False) for _ in range(count)]

    def one(self, tokens: int) -> str:
        """At most `tokens` tokens once encoded again (decoded neighbours can merge or split)."""
        text = self.tokenizer.decode([self.rng.choice(self.ids) for _ in range(tokens)])
        for _ in range(8):
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if len(ids) <= tokens:
                break
            text = self.tokenizer.decode(ids[:tokens])
        return text


def measure(cfg: RunConfig, batches: list[int], contexts: list[int], decode_tokens: int, repeats: int,
            max_call_s: float, console: Console, max_seqs: int | None = None) -> EngineMeasurements:
    """Start one engine of cfg's single-device layout and time its decode steps and prefills."""
    from evaluator.bench.measure import worker_env
    from evaluator.data import load_prompts, load_tokenizer
    from evaluator.pool import engine_spec
    from launchers.engine_host import EngineHost
    tokenizer = load_tokenizer(cfg.model_folder)
    source = RandomPrompts(tokenizer, cfg.sampling.seed)
    host = EngineHost(cfg.engine, engine_spec(cfg), worker_env(cfg, 0))
    try:
        console.print(f"profile: starting one {cfg.engine} engine on 1 {cfg.device} device", highlight=False)
        started = host.start()
        kv = started.get("kv_cache_tokens")
        console.print(f"profile: engine up in {started['startup_s']:.1f} s"
                      + (f", {kv:,} KV-cache tokens" if kv else ""), highlight=False)

        def call(batch: int, context: int, new_tokens: int) -> tuple[float, float]:
            """(seconds, mean prompt tokens) of one generate of fresh prompts."""
            prompts = source.make(batch, context)
            params = SamplingConfig(max_tokens=new_tokens, temperature=0.0, ignore_eos=True, seed=cfg.sampling.seed)
            t = time.perf_counter()
            out = host.generate(prompts, params)
            return time.perf_counter() - t, sum(c.prompt_tokens for c in out) / len(out)
        call(1, min(contexts), 2)                      # untimed: the first call of an engine warms it up
        decode, prefill = [], []
        for context in contexts:
            last_step = None
            for batch in sorted(batches):
                if max_seqs and batch > max_seqs:
                    continue
                if kv and batch * (context + decode_tokens + 1) > kv:
                    console.print(f"profile: batch {batch} x {context} tokens would not fit the KV cache: left out",
                                  highlight=False)
                    continue
                if last_step and last_step[1] * batch / last_step[0] * decode_tokens > max_call_s:
                    console.print(f"profile: batch {batch} at context {context} would take over {max_call_s:g} s "
                                  f"a call: left out", highlight=False)
                    continue
                one, long_, prompt_tokens = [], [], 0.0
                for _ in range(repeats):
                    s1, prompt_tokens = call(batch, context, 1)
                    sn, _ = call(batch, context, decode_tokens + 1)
                    one.append(s1)
                    long_.append(sn)
                step = max(1e-9, (min(long_) - min(one)) / decode_tokens)
                decode.append(DecodePoint(batch, prompt_tokens + decode_tokens / 2, step))
                prefill.append(PrefillPoint(round(batch * prompt_tokens), batch, prompt_tokens, min(one)))
                last_step = (batch, step)
                console.print(f"profile: batch {batch:>4}, context {prompt_tokens:>6.0f}: step {1000 * step:8.2f} ms, "
                              f"prefill {batch * prompt_tokens / min(one):10.0f} tok/s", highlight=False)
        workload = None
        if not cfg.sampling.ignore_eos and cfg.workload == "offline":
            sample = load_prompts(cfg.data, cfg.model_folder, min(cfg.limit or 16, 16))
            out = host.generate([p.token_ids for p in sample], cfg.sampling)
            workload = Workload(len(sample), sum(p.prompt_tokens for p in sample) / len(sample),
                                sum(c.completion_tokens for c in out) / len(out),
                                f"the first {len(sample)} prompts of {cfg.data}, generated with the run's sampling")
            console.print(f"profile: answers average {workload.output_tokens:.0f} tokens ({workload.source})",
                          highlight=False)
        return EngineMeasurements(started["startup_s"], kv, tuple(decode), tuple(prefill), workload)
    finally:
        host.close()
