"""The demo's own settings give real answers: the demo model (prepared from its pinned GGUF on PyPI,
as `make demo` does) with the demo's flags answers some of the first 8 GSM8K problems right, and
the one engine start that costs also checks what the engine reports against what was planned (the
KV cache the demo gives in bytes, in tokens after vLLM's block rounding)."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from evaluator.store import RunDir
from tests.conftest import ROOT, last_json, run_cli

pytestmark = pytest.mark.slow


def demo_kwargs() -> str:
    """What launchers/demo.sh passes: bf16 where the CPU has AVX-512 BF16 or AMX, float32 otherwise;
    eager; the KV cache in bytes that demo.sh gives (read from it, so the two cannot drift apart)."""
    out = subprocess.run(["grep", "-qwE", "avx512_bf16|amx_bf16", "/proc/cpuinfo"]).returncode
    kv = re.search(r'"kv_cache_memory_bytes": (\d+)', (ROOT / "launchers" / "demo.sh").read_text())
    assert kv, "launchers/demo.sh gives the KV cache in bytes"
    kwargs = {"enforce_eager": True, "kv_cache_memory_bytes": int(kv.group(1))}
    return json.dumps(kwargs if out == 0 else {"dtype": "float32", **kwargs})


def test_the_demo_settings_answer_some_problems_right(tmp_path):
    model, data = ROOT / "models" / "qwen2.5-coder-0.5b-instruct", ROOT / "data" / "gsm8k_test.parquet"
    r = run_cli(["-m", "datasets_prep", "model", "qwen2.5-coder-0.5b-instruct", "--out", str(model)], lock=False,
                timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    if not data.is_file():
        assert run_cli(["-m", "datasets_prep", "gsm8k", "--out", str(data)], lock=False, timeout=300).returncode == 0
    r = run_cli(["-m", "evaluator", "--engine", "vllm", "--device", "cpu", "--model", str(model), "--data", str(data),
                 "--limit", "8", "--max-tokens", "384", "--max-model-len", "2048", "--engine-kwargs", demo_kwargs(),
                 "--output-dir", str(tmp_path), "--run-id", "demo", "--no-table"], timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = RunDir(tmp_path / "demo").read_summary()
    samples = RunDir(tmp_path / "demo").read_samples()
    assert sum(s.flexible_correct for s in samples) >= 1, [s.response[-120:] for s in samples]
    assert sum(s.completion_tokens < 384 for s in samples) >= 6, "answers end at EOS, not at the token budget"
    assert summary.flexible_ci[0] > 0
    reported = summary.replicas[0].kv_cache_tokens
    predicted = summary.memory["predicted"]["kv_cache_tokens"]
    assert reported > 0 and abs(predicted - reported) / reported < 0.01, (predicted, reported)
    assert last_json(r.stdout)["run_id"] == "demo"
