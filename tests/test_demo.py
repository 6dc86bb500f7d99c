"""The demo's own settings give real answers: the demo model (prepared from its pinned GGUF on PyPI,
as `make demo` does) with the demo's flags answers some of the first 8 GSM8K problems right, and
the one engine start that costs also checks what the engine reports against what was planned (the
KV cache the demo gives in bytes, in tokens after vLLM's block rounding). The demo sizes itself to
the host (bf16 and 16 problems where the CPU has a fast bf16 kernel, float32, 4 problems and fewer
tokens elsewhere), which
launchers/demo.sh --print-settings shows without running anything."""
from __future__ import annotations

import json
import subprocess

import pytest

from evaluator.store import RunDir
from tests.conftest import ROOT, last_json, run_cli


def demo_settings(**env: str) -> dict[str, str]:
    """What launchers/demo.sh would run on this host (DEMO_* variables as given)."""
    import os
    r = subprocess.run(["bash", str(ROOT / "launchers" / "demo.sh"), "--print-settings"], capture_output=True,
                       text=True, env={**os.environ, **env}, timeout=30)
    assert r.returncode == 0, r.stderr
    return dict(line.split("=", 1) for line in r.stdout.splitlines())


def test_the_demo_sizes_itself_to_the_host():
    """Without a fast bf16 kernel (forced here with DEMO_DTYPE=float32) the demo runs float32 and a
    quarter of the problems, with a cache for float32's 24 KiB tokens; the host's own choice follows
    /proc/cpuinfo."""
    f32 = demo_settings(DEMO_DTYPE="float32")
    assert (f32["DTYPE"], f32["LIMIT"], f32["MAX_TOKENS"]) == ("float32", "4", "320")
    assert json.loads(f32["KWARGS"]) == {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 256 * 2**20}
    bf16 = demo_settings(DEMO_DTYPE="bfloat16")
    assert (bf16["DTYPE"], bf16["LIMIT"], bf16["MAX_TOKENS"]) == ("bfloat16", "16", "384")
    assert "dtype" not in json.loads(bf16["KWARGS"])
    fast = subprocess.run(["grep", "-qwE", "avx512_bf16|amx_bf16", "/proc/cpuinfo"]).returncode == 0
    assert demo_settings(DEMO_DTYPE="auto") == (bf16 if fast else f32)
    assert demo_settings(DEMO_DTYPE="float32", DEMO_LIMIT="3", DEMO_MAX_TOKENS="512") == {**f32, "LIMIT": "3",
                                                                                            "MAX_TOKENS": "512"}


@pytest.mark.parametrize("env,message", [({"DEMO_DTYPE": "fp8"}, "DEMO_DTYPE must be auto, bfloat16 or float32"),
                                         ({"DEMO_LIMIT": "all"}, "must be whole numbers above 0")])
def test_bad_demo_settings_are_one_line_exit_2(env, message):
    import os
    r = subprocess.run(["bash", str(ROOT / "launchers" / "demo.sh")], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=30)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


@pytest.mark.slow
def test_the_demo_settings_answer_some_problems_right(tmp_path):
    model, data = ROOT / "models" / "qwen2.5-coder-0.5b-instruct", ROOT / "data" / "gsm8k_test.parquet"
    r = run_cli(["-m", "datasets_prep", "model", "qwen2.5-coder-0.5b-instruct", "--out", str(model)], lock=False,
                timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    if not data.is_file():
        assert run_cli(["-m", "datasets_prep", "gsm8k", "--out", str(data)], lock=False, timeout=300).returncode == 0
    settings = demo_settings()
    r = run_cli(["-m", "evaluator", "--engine", "vllm", "--device", "cpu", "--model", str(model), "--data", str(data),
                 "--limit", "8", "--max-tokens", settings["MAX_TOKENS"], "--max-model-len", "2048",
                 "--engine-kwargs", settings["KWARGS"],
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
