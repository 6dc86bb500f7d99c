"""The backends' pure translation, without an engine: our neutral settings into vLLM's and SGLang's
own names (engine kwargs, server argv, sampling parameters, SGLang's n-copies grouping), what
their start-up logs say (compile state, KV-cache tokens, weights), their capabilities and the
layout kwargs they refuse; the memory prediction on known configs; the capacity search on
hand-made inputs (the metrics scrape is tests/test_scrape.py's). Known numbers throughout, never
the code's own formula."""
from __future__ import annotations

import math

import pytest

from evaluator.layout import Layout
from evaluator.records import Completion, RunConfig, SamplingConfig
from launchers.engines import sglang, vllm
from launchers.engines.base import (EngineSpec, cannot, capabilities, cli_flags, layout_kwarg_problem, read_log,
                                    redact)

SPEC = EngineSpec(model="/m", tp=2, device="cuda", seed=7, max_model_len=4096,
                  engine_kwargs={"enforce_eager": True, "gpu_memory_utilization": 0.8})


# --- vLLM -------------------------------------------------------------------------------------------
def test_vllm_llm_kwargs_and_the_user_wins():
    assert vllm.llm_kwargs(SPEC) == {"model": "/m", "tensor_parallel_size": 2, "seed": 7, "max_model_len": 4096,
                                     "enforce_eager": True, "gpu_memory_utilization": 0.8}
    cpu = EngineSpec(model="/m", tp=1, device="cpu", cpu_memory_fraction=0.25)
    assert vllm.llm_kwargs(cpu) == {"model": "/m", "tensor_parallel_size": 1, "seed": 0, "gpu_memory_utilization": 0.25}


def test_vllm_server_argv_env_and_api_key():
    launch = vllm.server_launch(EngineSpec(model="/m", tp=1, device="cuda", native_dp=2,
                                           engine_kwargs={"enforce_eager": True, "enable_prefix_caching": False}),
                                8001, "127.0.0.1", api_key="s3cret")
    argv = list(launch.argv)
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--model") + 1] == "/m" and argv[argv.index("--port") + 1] == "8001"
    assert "--enforce-eager" in argv and "--no-enable-prefix-caching" in argv
    assert argv[argv.index("--data-parallel-size") + 1] == "2" and argv[argv.index("--tensor-parallel-size") + 1] == "1"
    assert "s3cret" not in " ".join(argv), "the key is not on the command line every user can read"
    assert launch.env["VLLM_API_KEY"] == "s3cret" and launch.api_key == "s3cret"
    assert launch.health_path == "/health" and launch.model_name == "/m"


def test_vllm_engine_env_offline_cpu_keeps_the_engine_core_in_process(monkeypatch):
    """What the backend sets (and records): on CPU the AOT cache off, and for the offline engine
    its core in process; the OpenAI server and GPUs keep vLLM's own; the user's setting wins."""
    for key in ("VLLM_USE_AOT_COMPILE", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_BATCH_INVARIANT"):
        monkeypatch.delenv(key, raising=False)
    cpu = EngineSpec(model="/m", tp=1, device="cpu")
    assert vllm.engine_env(cpu) == {"VLLM_USE_AOT_COMPILE": "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert vllm.engine_env(cpu, serving=True) == {"VLLM_USE_AOT_COMPILE": "0"}
    assert vllm.server_launch(cpu, 8001, "127.0.0.1").env == {"VLLM_USE_AOT_COMPILE": "0"}
    assert vllm.engine_env(EngineSpec(model="/m", tp=1, device="cuda")) == {}
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    assert vllm.engine_env(cpu) == {"VLLM_USE_AOT_COMPILE": "0"}


def test_cli_flags_rules():
    assert cli_flags({"a_b": True, "c": False, "d": None, "e": {"x": 1}, "f": [1, 2], "g": 3}) == \
        ["--a-b", "--no-c", "--e", '{"x": 1}', "--f", "1", "2", "--g", "3"]
    assert cli_flags({"c": False, "h": True}, negatable=False) == ["--h"]
    assert redact("--api-key abc --x abc", "abc") == "--api-key *** --x ***" and redact("x", None) == "x"


def test_vllm_sampling_params():
    pytest.importorskip("vllm")
    sp = vllm.sampling_params(SamplingConfig(max_tokens=5, top_k=-1, temperature=0.5, repetition_penalty=1.1,
                                             ignore_eos=True), [3, 4])
    assert [p.seed for p in sp] == [3, 4] and sp[0].top_k in (0, -1) and sp[0].max_tokens == 5
    assert sp[0].ignore_eos and sp[0].repetition_penalty == 1.1


VLLM_LOG = """
(EngineCore pid=12) INFO 12-01 21:15:40 [gpu_model_runner.py:2100] Model loading took 14.9900 GiB memory and 5.2 seconds
(EngineCore pid=12) INFO 12-01 21:15:55 [backends.py:399] Compiling a graph for compile range (1, 8192) takes 16.02 s
(EngineCore pid=12) INFO 12-01 21:16:02 [kv_cache_utils.py:1087] GPU KV cache size: 1,845,120 tokens
(EngineCore pid=12) INFO 12-01 21:16:02 [kv_cache_utils.py:1091] Maximum concurrency for 2,048 tokens per request: 900.94x
"""


def test_vllm_reads_its_start_up_log():
    facts = vllm.read_log(VLLM_LOG.splitlines())
    assert (facts.compile, facts.kv_cache_tokens, facts.max_concurrency, facts.weights_gib) == \
        ("cold", 1_845_120, pytest.approx(900.94), pytest.approx(14.99))
    warm = vllm.read_log(["INFO ... Directly load the compiled graph(s) for compile range (1, 8192) from the cache, took 2.1 s",
                          "INFO CPU KV cache size: 30,000 tokens, Maximum concurrency for 1,024 tokens per request: 29.30x"])
    assert (warm.compile, warm.kv_cache_tokens, warm.max_concurrency) == ("warm", 30_000, pytest.approx(29.3))
    assert vllm.read_log(["nothing here"]).to_dict() == {}


# --- SGLang -----------------------------------------------------------------------------------------
def test_sglang_engine_kwargs_flags_and_server_argv():
    spec = EngineSpec(model="/m", tp=2, device="cuda", seed=3, max_model_len=2048, native_dp=1,
                      engine_kwargs={"attention_backend": "triton", "sampling_backend": "pytorch"})
    assert sglang.engine_kwargs(spec) == {"model_path": "/m", "tp_size": 2, "dp_size": 1, "random_seed": 3,
                                          "context_length": 2048, "attention_backend": "triton",
                                          "sampling_backend": "pytorch"}
    launch = sglang.server_launch(spec, 9000, "0.0.0.0", api_key="k3y")
    argv = list(launch.argv)
    assert argv[1:3] == ["-m", "sglang.launch_server"] and argv[argv.index("--model-path") + 1] == "/m"
    assert argv[argv.index("--tp-size") + 1] == "2" and argv[argv.index("--context-length") + 1] == "2048"
    assert "--enable-metrics" in argv, "the per-level running/queued/KV figures come from /metrics"
    assert argv[argv.index("--api-key") + 1] == "k3y" and "k3y" not in " ".join(launch.redacted_argv)
    assert launch.env == {"SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION": "false"}


def test_sglang_sampling_params_and_n_copies_grouping():
    p = sglang.sampling_params(SamplingConfig(max_tokens=9, temperature=0.7, top_k=20, ignore_eos=True), 11)
    assert p == {"max_new_tokens": 9, "temperature": 0.7, "top_p": 1.0, "top_k": 20, "repetition_penalty": 1.0,
                 "ignore_eos": True, "sampling_seed": 11}
    assert "sampling_seed" not in sglang.sampling_params(SamplingConfig(), None)

    class FakeSGL:                    # answers "first id#k" for each flattened copy
        def generate(self, input_ids, sampling_params):
            self.params = sampling_params
            return [{"text": f"{chr(ids[0])}#{k}", "meta_info": {"prompt_tokens": 3, "completion_tokens": 2}}
                    for k, ids in enumerate(input_ids)]
    engine = sglang.SGLangEngine.__new__(sglang.SGLangEngine)
    engine.engine = FakeSGL()
    out = engine.generate([(ord("a"),), (ord("b"),)], SamplingConfig(n=2, temperature=0.5), seeds=[10, 20])
    assert out == [Completion(("a#0", "a#1"), 3, 4), Completion(("b#2", "b#3"), 3, 4)]
    # each copy its own seed, derived from the prompt's: seed * n + k
    assert [sp["sampling_seed"] for sp in engine.engine.params] == [20, 21, 40, 41]


def test_sglang_reads_its_start_up_log():
    """KV tokens, weights and its start state from SGLang's own lines (0.5.17): a start without
    torch.compile compiled nothing (capturing CUDA graphs is not a compile cache): none; its
    piecewise torch.compile backend compiling: cold (0.5.17 cannot load one from a cache); with
    --enable-torch-compile SGLang says nothing about a cache: unknown (None)."""
    lines = ["[2026-12-01 21:00:00] server_args=ServerArgs(model_path='/m', enable_torch_compile=False, ...)",
             "[2026-12-01 21:00:01] Load weight end. type=Qwen2ForCausalLM, dtype=torch.bfloat16, avail mem=124.2 GB, "
             "mem usage=15.25 GB.",
             "[2026-12-01 21:00:05] Capture target decode CUDA graph begin. backend=full, num_tokens_per_req=1, bs=[1, 2]",
             "[2026-12-01 21:00:09] max_total_num_tokens=2011482, chunked_prefill_size=8192, max_prefill_tokens=16384"]
    facts = sglang.read_log(lines)
    assert (facts.kv_cache_tokens, facts.weights_gib, facts.compile) == (2_011_482, pytest.approx(15.25), "none")
    cold = lines + ["[2026-12-01 21:00:07] Compiling a graph for shape 8 takes 12.31 s"]
    assert sglang.read_log(cold).compile == "cold"
    compiled = [lines[0].replace("enable_torch_compile=False", "enable_torch_compile=True"), *lines[1:]]
    assert sglang.read_log(compiled).compile is None
    assert sglang.read_log(["nothing here"]).to_dict() == {}
    two_ranks = sglang.read_log([lines[3], lines[3].replace("2011482", "2011480")])
    assert two_ranks.kv_cache_tokens == 4_022_962 and two_ranks.compile == "none"


def test_sglang_offline_engine_logs_what_its_server_logs():
    """sglang.Engine logs at "error" unless told otherwise, so the offline replica's start said none
    of what read_log reads (the H200 offline row's KV tokens were "-"); it gets the server's level,
    unless the user set one."""
    spec = EngineSpec(model="/m", tp=1, device="cuda")
    kwargs = sglang.offline_kwargs(spec)
    assert kwargs["log_level"] == "info" and kwargs["model_path"] == "/m" and kwargs["port"] > 0
    quiet = EngineSpec(model="/m", tp=1, device="cuda", engine_kwargs={"log_level": "error"})
    assert sglang.offline_kwargs(quiet)["log_level"] == "error"


def test_sglang_start_facts_from_get_server_info():
    """What sglang.Engine.get_server_info() says (0.5.17's shape: each DP rank's internal state with
    its memory_usage), summed over the ranks; without internal states, the first scheduler's
    max_total_num_tokens times the DP ranks."""
    info = {"max_total_num_tokens": 10_869_630, "dp_size": 2,
            "internal_states": [{"memory_usage": {"weight": 1.17, "kvcache": 124.4, "token_capacity": 10_869_630}},
                                {"memory_usage": {"weight": 1.17, "kvcache": 124.4, "token_capacity": 10_869_500}}]}
    facts = sglang.server_info_facts(info)
    assert facts.kv_cache_tokens == 10_869_630 + 10_869_500 and facts.weights_gib == pytest.approx(1.17)
    assert sglang.server_info_facts({"max_total_num_tokens": 100, "dp_size": 2}).kv_cache_tokens == 200
    assert sglang.server_info_facts({}).to_dict() == {}


def _qwen2_parameters(cfg: dict) -> int:
    """Parameters of a Qwen2 checkpoint with untied embeddings (q/k/v with biases, o, gated MLP, two
    norms per layer, embeddings and lm_head, the final norm): 7,615,616,512 for Qwen2.5-7B."""
    h, layers, vocab, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
    per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * inter + 2 * h
    return layers * per_layer + 2 * vocab * h + h


QWEN05 = {"num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "hidden_size": 896,
          "intermediate_size": 4864, "vocab_size": 151936}


@pytest.mark.parametrize("name,reported", [("demo 0.5B", 10_869_630), ("Qwen2.5-7B", 2_084_543)])
def test_sglang_memory_rule_on_one_h200(name, reported):
    """SGLang 0.5.17 on one H200 (NVML: 143,771 MiB = 140.4 GiB), bf16, context 2048, its default
    memory fraction: the server reported these KV-cache tokens for the demo model (its dequantised
    checkpoint keeps lm_head apart: 630M parameters) and for Qwen2.5-7B's architecture; the rule
    predicts each within 2% (10,981,235 and 2,109,488: +1.0% and +1.2%)."""
    import json
    from pathlib import Path
    from evaluator.memory import kv_bytes_per_token
    cfg = QWEN05 if name == "demo 0.5B" else json.loads(
        (Path(__file__).parents[1] / "datasets_prep" / "configs" / "qwen2.5-7b.json").read_text())
    assert _qwen2_parameters(cfg) == (630_167_424 if name == "demo 0.5B" else 7_615_616_512)
    spec = EngineSpec(model="/m", tp=1, device="cuda", max_model_len=2048)
    kv, how = sglang.kv_budget(spec, cfg, 143_771 * 2**20, 2 * _qwen2_parameters(cfg))
    predicted = kv // kv_bytes_per_token(cfg, 2)
    assert abs(predicted - reported) / reported < 0.02, (predicted, reported)
    assert "mem_fraction_static 0.907 x 140.4 GiB" in how


# --- capabilities ---------------------------------------------------------------------------------
def test_capabilities_and_refused_layout_kwargs():
    assert capabilities("vllm").native_dp == ("serve",) and capabilities("sglang").native_dp == ("offline", "serve")
    assert cannot("hf", "offline", 2) == "hf has no tensor parallelism (tp=2); it runs single and Ray DP layouts only"
    assert cannot("hf", "serve", 1).startswith("hf has no serve workload")
    assert cannot("vllm", "serve", 4, "cpu") is None and cannot("sglang", "offline", 1, "cpu") == "sglang does not run on cpu"
    assert layout_kwarg_problem("sglang", {"tp_size": 2}).startswith("--engine-kwargs 'tp_size' sets the layout")
    assert layout_kwarg_problem("vllm", {"enforce_eager": True}) is None
    assert read_log("hf", ["anything"]).to_dict() == {}


# --- memory prediction ------------------------------------------------------------------------------
QWEN7B = {"num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_size": 3584,
          "torch_dtype": "bfloat16", "max_position_embeddings": 32768}


def test_kv_bytes_per_token_on_known_configs():
    from evaluator.memory import kv_bytes_per_token, kv_heads_per_device
    assert kv_bytes_per_token(QWEN7B, 2) == 57_344                 # 2 x 28 x 4 x 128 x 2
    assert kv_bytes_per_token(QWEN7B, 2, tp=2) == 28_672           # 2 of the 4 KV heads per device
    assert kv_bytes_per_token(QWEN7B, 2, tp=8) == 14_336           # replicated: 1 KV head per device
    assert kv_heads_per_device(QWEN7B, 8) == 1 and kv_bytes_per_token(QWEN7B, 1) == 28_672   # fp8 KV
    qwen05 = {"num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "hidden_size": 896}
    assert kv_bytes_per_token(qwen05, 2) == 12_288                 # 2 x 24 x 2 x 64 x 2


def test_vllm_kv_budget_on_known_numbers():
    gib = 2 ** 30
    spec = EngineSpec(model="/m", tp=1, device="cuda")
    kv, how = vllm.kv_budget(spec, QWEN7B, 140 * gib, 15 * gib)
    assert kv == pytest.approx(140 * gib * 0.9 - 15 * gib - vllm.GPU_RUNTIME_BYTES) and "0.9 x 140.0 GiB" in how
    cpu = EngineSpec(model="/m", tp=1, device="cpu", cpu_memory_fraction=0.25)
    kv, _ = vllm.kv_budget(cpu, QWEN7B, 16 * gib, 1 * gib)
    assert kv == pytest.approx(4 * gib - 1.5 * gib - 0.61 * gib, rel=1e-6)
    assert vllm.kv_budget(EngineSpec("/m", 1, "cuda", engine_kwargs={"kv_cache_memory_bytes": 123}), QWEN7B, 1, 0)[0] == 123


def test_prediction_of_a_run_and_the_context_refusal(tiny_model):
    from evaluator.errors import UsageError
    from evaluator.memory import check_fits, kv_bytes_per_token, predict
    from evaluator.modelinfo import model_config
    cfg = RunConfig(engine="vllm", layout=Layout(), model=str(tiny_model), data="/d", device="cpu",
                    sampling=SamplingConfig(), max_model_len=1024, cpu_memory_fraction=0.2)
    p = predict(cfg)
    per = kv_bytes_per_token(model_config(str(tiny_model)), 2)
    assert p.kv_bytes_per_token == per and p.kv_cache_tokens == int(p.kv_budget_gib * 2**30 // per)
    assert p.context_tokens == 1024 and p.max_concurrency == pytest.approx(p.kv_cache_tokens / 1024)
    check_fits(cfg)
    with pytest.raises(UsageError, match="less than one sequence"):
        check_fits(RunConfig(**{**cfg.__dict__, "cpu_memory_fraction": 0.02}))


# --- capacity search --------------------------------------------------------------------------------
def _probe(rate, passed):
    from evaluator.serving.capacity import Probe
    return Probe(rate, passed, 1.0, 1.0, 10.0, 20)


def test_capacity_search_brackets_then_bisects():
    """A layout that holds up to 5 req/s: 1 holds, 2 holds, 4 holds, 8 fails (bracket 4-8), then
    the geometric middles 5.66 (fails), 4.76 (holds), 5.19 (fails), 4.97 (holds), bracket 4.97-5.19
    < 10% wide: done in 8 probes."""
    from evaluator.serving.capacity import capacity, next_rate
    truth, probes, rates = 5.0, [], []
    while (rate := next_rate(probes, 1.0, 10, 0.05)) is not None:
        rates.append(rate)
        probes.append(_probe(rate, rate <= truth))
    assert rates == [1.0, 2.0, 4.0, 8.0, 5.66, 4.76, 5.19, 4.97]
    cap = capacity(probes, 0.05)
    assert (cap.rate, cap.lowest_failed, cap.converged) == (4.97, 5.19, True)
    # the budget bounds it; a layout that holds nothing halves down
    probes = []
    while (rate := next_rate(probes, 1.0, 3, 0.05)) is not None:
        probes.append(_probe(rate, False))
    assert [p.rate for p in probes] == [1.0, 0.5, 0.25] and capacity(probes, 0.05).rate is None


def test_capacity_judge_counts_failed_requests_as_late():
    from evaluator.serving.capacity import judge
    from evaluator.serving.records import RequestResult
    ok = [RequestResult(i, "rate=1/s", 0, True, None, False, 0, 0.0, 0.1, (0.01,), 0.2, 5, 11, "x") for i in range(9)]
    bad = RequestResult(9, "rate=1/s", 0, False, "boom", False, 0, 0.0, None, (), None, 0, 0, "")
    p = judge([ok + [bad]], 1.0, 10.0, 90, slo_ttft_ms=500, slo_tpot_ms=50)
    assert p.passed and p.ttft_ms == pytest.approx(100.0)           # p90 of 9 x 100 ms and one inf
    assert not judge([ok[:8] + [bad, bad]], 1.0, 10.0, 90, 500, None).passed
    assert math.isinf(judge([[bad]], 1.0, 1.0, 50, 500, None).ttft_ms)
