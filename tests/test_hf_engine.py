"""Tests of the transformers reference engine (launchers/engines/hf.py) on a tiny random Qwen2 on
the CPU: batching and left padding leave every greedy answer what the prompt gets alone,
ignore_eos gives exactly max_tokens, completion_tokens counts what model.generate returns (stop
token included), seeded sampling does not depend on the batch, and bad specs are refused.

    .venv/bin/python -m pytest tests/test_hf_engine.py -q
"""
from __future__ import annotations

from pathlib import Path

import pytest

from evaluator.data import render_prompts
from evaluator.records import SamplingConfig
from launchers.engines import hf
from launchers.engines.base import EngineSpec

QUESTIONS = ["hi", "how many apples does she have after she sold half of them and then bought more",
             "the eggs cost 3 dollars each", "12 + 7 = ?", "a", "she sold 5 eggs per day for 3 days"]
MAX_TOKENS = 16
STOP_AT = 4           # the reference model's greedy answer to QUESTIONS[0] ends on its 4th token


def _rows(questions: list[str]) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": q}], "reward_model": {"ground_truth": "1"},
             "extra_info": {"index": i}} for i, q in enumerate(questions)]


@pytest.fixture(scope="module")
def ref_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with its weights redrawn at std 0.3, in float32, and a second stop token
    as Qwen checkpoints have (generation_config eos_token_id [<|im_end|>, X]).

    Why redrawn: at make_tiny_model's initial std (0.02) every prompt gets the same token repeated,
    so answers handed back in the wrong order would look right. Why X: random weights rarely end an
    answer, so X is the 4th token of QUESTIONS[0]'s greedy answer (one not among its first 3), and
    that answer is then known to stop at its 4th token, before MAX_TOKENS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    out = tmp_path_factory.mktemp("models") / "ref"
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() == 2:
                w.normal_(0.0, 0.3)
    prompt = render_prompts(_rows(QUESTIONS[:1]), tokenizer)[0].text
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        new = model.generate(**ids, max_new_tokens=STOP_AT, min_new_tokens=STOP_AT, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    new = new[0, ids["input_ids"].shape[1]:].tolist()
    stop = new[STOP_AT - 1]
    assert stop not in new[:STOP_AT - 1] and stop != tokenizer.eos_token_id, f"pick another STOP_AT: {new}"
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id, stop],
                                               pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def prompts(ref_model):
    from transformers import AutoTokenizer
    return render_prompts(_rows(QUESTIONS), AutoTokenizer.from_pretrained(ref_model))


@pytest.fixture(scope="module")
def engine(ref_model):
    # batch_size 4 for 6 prompts: two batches, each of prompts of different lengths (padding in both)
    e = hf.HFEngine(EngineSpec(model=str(ref_model), tp=1, device="cpu",
                               engine_kwargs={"dtype": "float32", "batch_size": 4}))
    yield e
    e.close()


GREEDY = SamplingConfig(max_tokens=MAX_TOKENS)


def test_batched_greedy_equals_each_prompt_alone(engine, prompts):
    """Left padding with its attention mask leaves each answer what the prompt gets alone; with
    right padding the shorter prompts of a batch would continue after pad tokens."""
    assert len({p.prompt_tokens for p in prompts}) == len(prompts), "the prompts must differ in length"
    batched = engine.generate([p.token_ids for p in prompts], GREEDY)
    alone = [engine.generate([p.token_ids], GREEDY)[0] for p in prompts]
    assert [c.texts for c in batched] == [c.texts for c in alone]
    assert [c.completion_tokens for c in batched] == [c.completion_tokens for c in alone]
    # prompt_tokens: the prompt's own tokens, as the project's renderer counted them (no padding)
    assert [c.prompt_tokens for c in batched] == [p.prompt_tokens for p in prompts]
    assert len({c.text for c in batched}) == len(prompts), "different prompts, different answers"


def test_ignore_eos_gives_exactly_max_tokens(engine, prompts):
    """Every answer is max_tokens long, and (as in vLLM and SGLang, which only stop stopping) the
    answer that stopped goes on past its stop token instead of being steered away from it."""
    ids = [p.token_ids for p in prompts]
    natural = engine.generate(ids, GREEDY)
    assert natural[0].completion_tokens == STOP_AT < MAX_TOKENS, "the first prompt stops early without ignore_eos"
    forced = engine.generate(ids, SamplingConfig(max_tokens=MAX_TOKENS, ignore_eos=True))
    assert [c.completion_tokens for c in forced] == [MAX_TOKENS] * len(prompts)
    assert forced[0].text.startswith(natural[0].text) and len(forced[0].text) > len(natural[0].text)


def test_greedy_is_identical_twice(engine, prompts):
    ids = [p.token_ids for p in prompts]
    first, second = engine.generate(ids, GREEDY), engine.generate(ids, GREEDY)
    assert first == second


def test_completion_tokens_match_model_generate_with_the_stop_token(engine, prompts, ref_model):
    """transformers' own generate, same model and settings, returns the new ids ending with the
    stop token; the engine counts exactly those (vLLM counts the stop token too)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(ref_model)
    model = AutoModelForCausalLM.from_pretrained(ref_model, dtype=torch.float32)
    ids = tokenizer(prompts[0].text, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    assert len(new) == STOP_AT and new[-1] in model.generation_config.eos_token_id
    got = engine.generate([prompts[0].token_ids], GREEDY)[0]
    assert got.completion_tokens == len(new)
    assert got.text == tokenizer.decode(new, skip_special_tokens=True)


def test_seeded_sampling_does_not_depend_on_the_batch(engine, prompts):
    """A prompt's sampled answers depend on its seed only, not on the prompts beside it; n answers."""
    params = SamplingConfig(max_tokens=8, temperature=1.0, top_k=50, n=2)
    a, b, c = (p.token_ids for p in prompts[:3])
    first = engine.generate([a, b, c], params, seeds=[11, 12, 13])
    again = engine.generate([c, b], params, seeds=[13, 12])
    assert [first[2].texts, first[1].texts] == [again[0].texts, again[1].texts]
    assert all(len(x.texts) == 2 for x in first)
    other_seed = engine.generate([b], params, seeds=[99])[0]
    assert other_seed.texts != first[1].texts


def test_tensor_parallelism_is_refused(ref_model):
    with pytest.raises(ValueError, match="no tensor parallelism"):
        hf.HFEngine(EngineSpec(model=str(ref_model), tp=2, device="cpu"))
    with pytest.raises(NotImplementedError, match="--workload offline"):
        hf.server_launch(EngineSpec(model=str(ref_model), tp=1, device="cpu"), 8000, "127.0.0.1")


def test_unknown_engine_kwarg_is_refused(ref_model):
    with pytest.raises(ValueError, match=r"'enforce_eager'.*accepts: dtype, batch_size"):
        hf.HFEngine(EngineSpec(model=str(ref_model), tp=1, device="cpu", engine_kwargs={"enforce_eager": True}))
    with pytest.raises(ValueError, match="dtype 'int8'"):
        hf.HFEngine(EngineSpec(model=str(ref_model), tp=1, device="cpu", engine_kwargs={"dtype": "int8"}))


def test_auto_dtype_is_the_checkpoints(tiny_model):
    """make_tiny_model writes a bfloat16 checkpoint; "auto" keeps it on the CPU too."""
    import torch
    e = hf.HFEngine(EngineSpec(model=str(tiny_model), tp=1, device="cpu"))
    try:
        assert e.dtype == torch.bfloat16 and next(e.model.parameters()).dtype == torch.bfloat16
    finally:
        e.close()
