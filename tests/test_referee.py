"""The serving bench's plan and its referee (AIPerf) without an engine: every client run takes
prompts no other run sent and each client goes first as often as the others; flags the bench cannot
honour (too few unused prompts, no referee) are one line and exit 2 before any engine starts; and
AIPerf's export is read or refused. The bench itself on a real server with the real AIPerf is
tests/test_serving.py::test_our_client_agrees_with_vllm_bench_serve."""
from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from evaluator.bench.referee import Referee, RefereeError, aiperf_argv, read_export
from evaluator.bench.serving import plan_runs
from tests.conftest import FAST_CPU, run_cli


def test_plan_gives_each_client_the_first_place_equally_and_distinct_runs():
    """Three repeats of three clients: each client first once per level (the order rotates, so no
    client is always the one that meets a server its predecessor just loaded); trust_env last;
    every (level, repeat, client) is one run with its own tag, after the one warm-up."""
    runs = plan_runs((4, 16), 3, True, ("theirs", "ours", "referee", "ours_trust_env"))
    assert runs[0] == ("warmup", 0, 0, "warmup")
    tags = [t for t, *_ in runs]
    assert len(tags) == len(set(tags)) == 1 + 2 * 3 * 4
    for c in (4, 16):
        orders = [[who for _, lv, r, who in runs if lv == c and r == rep] for rep in (1, 2, 3)]
        assert [o[0] for o in orders] == ["theirs", "ours", "referee"]
        assert all(o[-1] == "ours_trust_env" and sorted(o) == sorted(orders[0]) for o in orders)
    # two clients alternate, as the bench did before the referee
    two = plan_runs((2,), 2, False, ("theirs", "ours"))
    assert [who for *_, who in two] == ["theirs", "ours", "ours", "theirs"]


def _bench(tiny_model, data, *extra):
    return run_cli(["-m", "evaluator.bench.serving", "--model", str(tiny_model), "--data", str(data), "--device", "cpu",
                    *FAST_CPU, *extra], timeout=120, lock=False)


def test_bench_refuses_what_it_cannot_honour_before_any_engine(tiny_model, gsm8k_parquet, tmp_path):
    """40 prompts cannot give 7 runs x 8 fresh ones; a referee that is not there is named with the
    way to get it; a level that is not a distinct whole number of requests in flight (each names a
    run of its own) is refused. One line on stderr, exit 2, within seconds, nothing written."""
    t0 = time.time()
    r = _bench(tiny_model, gsm8k_parquet, "--limit", "8", "--concurrency", "2,4", "--repeats", "1", "--trust-env",
               "--referee", "none", "--out", str(tmp_path / "a"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"error: --data {gsm8k_parquet} has 40 prompts; 7 client runs (warm-up, 2 level(s) x "
                                "1 repeat(s) x 3 client(s)) x --limit 8 need 56 that no run re-sends: lower --limit or "
                                "--repeats")
    r = _bench(tiny_model, gsm8k_parquet, "--limit", "2", "--referee-bin", str(tmp_path / "no-aiperf"),
               "--out", str(tmp_path / "b"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"error: --referee aiperf: AIPerf not found ({tmp_path / 'no-aiperf'}); install it "
                                "with `make referee`, or pass --referee none")
    for bad in ("4,4", "2.5", "inf"):
        r = _bench(tiny_model, gsm8k_parquet, "--limit", "2", "--concurrency", bad, "--out", str(tmp_path / "a"))
        assert r.returncode == 2 and r.stderr.strip() == (f"error: --concurrency {bad}: the levels must be distinct whole "
                                                          "numbers of requests in flight, at least 1"), r.stderr
    assert time.time() - t0 < 90 and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_aiperf_argv_sends_each_prompt_once_in_order():
    argv = aiperf_argv(Referee("aiperf", "/x/aiperf", "0.13.0"), url="http://127.0.0.1:8000", model_name="m",
                       tokenizer="models/tiny", prompts_jsonl="p.jsonl", num_prompts=5, concurrency=4, max_tokens=32,
                       ignore_eos=True, artifact_dir="out", api_key="k")
    pairs = dict(zip(argv, argv[1:]))
    assert argv[:2] == ["/x/aiperf", "profile"]
    assert (pairs["--request-count"], pairs["--concurrency"], pairs["--dataset-sampling-strategy"]) == ("5", "4", "sequential")
    assert (pairs["--output-tokens-mean"], pairs["--output-tokens-stddev"], pairs["--api-key"]) == ("32", "0", "k")
    assert Counter(a for a in argv if a.startswith("ignore_eos") or a.startswith("temperature")) == \
        Counter({"ignore_eos:true": 1, "temperature:0": 1})
    assert "--use-server-token-count" in argv and "--streaming" in argv


def _export(**changes):
    d = {"was_cancelled": False, "is_complete": True, "request_count": {"avg": 4.0},
         "output_token_throughput": {"avg": 300.0}, "time_to_first_token": {"avg": 20.0, "p50": 19.0},
         "inter_token_latency": {"avg": 5.0, "p50": 4.5}, "inter_chunk_latency": {"avg": 5.1},
         "total_output_tokens": {"avg": 128.0}}
    return {**d, **changes}


def test_read_export_takes_the_figures_and_refuses_a_broken_run(tmp_path):
    (tmp_path / "profile_export_aiperf.json").write_text(json.dumps(_export()))
    got = read_export(tmp_path)
    assert (got.output_tok_s, got.mean_ttft_ms, got.p50_ttft_ms, got.mean_tpot_ms, got.mean_itl_ms) == (300, 20, 19, 5, 5.1)
    assert (got.completed, got.errors, got.output_tokens) == (4, 0, 128)
    for bad, says in ((_export(was_cancelled=True), "cancelled"), (_export(time_to_first_token={"avg": None}), "no time_to_first_token.avg"),
                      (_export(output_token_throughput={"avg": float("inf")}), "output_token_throughput.avg")):
        (tmp_path / "profile_export_aiperf.json").write_text(json.dumps(bad))
        with pytest.raises(RefereeError, match=says):
            read_export(tmp_path)
    (tmp_path / "profile_export_aiperf.json").unlink()
    with pytest.raises(RefereeError, match="wrote no readable"):
        read_export(tmp_path)
