"""Bad input through the real CLI: one clear line on stderr, exit code 2, nothing written."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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
    return d


CASES = [
    ("unknown engine", ["--engine", "tgi"], "invalid choice: 'tgi'"),
    ("unknown mode", ["--mode", "ring"], "invalid choice: 'ring'"),
    ("dp x tp != gpus", ["--mode", "hybrid", "--gpus", "3", "--dp", "2", "--tp", "2"], "dp x tp = 2 x 2 = 4 but --gpus is 3"),
    ("more devices than visible", ["--mode", "dp", "--gpus", "64"], "only 2 CPU device(s)"),
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
    ("engine not installed", ["--engine", "sglang"], "pip install '.[sglang]'"),
    ("malformed engine kwargs", ["--engine-kwargs", "{enforce_eager: true"], "--engine-kwargs is not valid JSON"),
    ("n without temperature", ["--n", "4"], "--n > 1 needs --temperature > 0"),
    ("resume of nothing", ["--resume", "{bad}/notamodel"], "not a run folder"),
]


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
