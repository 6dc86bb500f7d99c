"""SLURM sweeps: the sweep file, array planning, skip/resume and the merged report as fast unit
tests; then a real single-node SLURM (munged, slurmctld, slurmd started here from a generated
slurm.conf) runs a 4-task array sweep of real vLLM-CPU runs, a re-submission, and a Ray cluster
job.

    python -m pytest tests/test_slurm.py -m "not slow"     # unit tests only, seconds
    python -m pytest tests/test_slurm.py -s                # with the real SLURM (root, ~5 min)

The SLURM tests skip, saying why, only where the daemons cannot be installed (slurm/install_deps.sh)
or started, and never under `make test` (CI): there REQUIRE_REAL_PARTS=1 turns the skip into a
failure, so a CI run that could not test SLURM is not green. Jobs hold /tmp/engine.lock around every engine (EVAL_ENGINE_LOCK), so they never start
engines beside another test session's.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from evaluator.report import sweep as sweep_report
from evaluator.layout import Layout, resolve
from evaluator.records import ReplicaTiming, RunConfig, RunSummary, SamplingConfig
from launchers import sweep
from launchers.sweep import SweepError
from tests.conftest import FAST_CPU, LOCK, ROOT, last_json, run_cli, skip_or_fail


# --- fast unit tests: no daemons ---------------------------------------------------------------

def test_parse_sweep_file():
    """A line names its layout by axes (an axis left out takes its default), then the flags."""
    text = """# header
vllm dp=1 tp=1   # one device

sglang dp=2 --limit 8 --engine-kwargs '{"enforce_eager": true}'
vllm dp=2 tp=2 --max-tokens 64
vllm dp=2 dp-backend=router router-policy=round_robin --workload serve
"""
    lines = sweep.parse_sweep(text)
    assert [(l.task, l.engine, l.layout) for l in lines] == [
        (0, "vllm", Layout()), (1, "sglang", Layout(2, 1)), (2, "vllm", Layout(2, 2)),
        (3, "vllm", Layout(2, 1, dp_backend="router", router_policy="round_robin"))]
    assert lines[1].flags == ("--limit", "8", "--engine-kwargs", '{"enforce_eager": true}')
    assert lines[2].argv() == ["--engine", "vllm", "--mode", "hybrid", "--gpus", "4", "--dp", "2", "--tp", "2",
                               "--max-tokens", "64"]
    assert lines[3].argv() == ["--engine", "vllm", "--mode", "dp", "--gpus", "2", "--dp-backend", "router",
                               "--router-policy", "round_robin", "--workload", "serve"]
    # text() is what sweep.txt holds: it parses back to the same runs
    assert [l.text() for l in lines] == ["vllm dp=1 tp=1", "sglang dp=2 tp=1 --limit 8 --engine-kwargs "
                                         "'{\"enforce_eager\": true}'", "vllm dp=2 tp=2 --max-tokens 64",
                                         "vllm dp=2 tp=1 dp-backend=router router-policy=round_robin --workload serve"]
    assert sweep.parse_sweep("\n".join(l.text() for l in lines)) == lines


def test_the_older_sweep_format_is_still_read():
    """Sweep folders written before named axes (`ENGINE MODE GPUS [DP TP] [FLAGS]`, the backend among
    the flags) re-submit: each line reads as the same layout and the same evaluator arguments."""
    text = """vllm single 1   # one device
sglang dp 2 --limit 8 --dp-backend native
vllm hybrid 4 2 2 --max-tokens 64
"""
    lines = sweep.parse_sweep(text)
    assert [(l.engine, l.layout, l.flags) for l in lines] == [
        ("vllm", Layout(), ()), ("sglang", Layout(2, 1, dp_backend="native"), ("--limit", "8")),
        ("vllm", Layout(2, 2), ("--max-tokens", "64"))]
    assert lines[1].argv() == ["--engine", "sglang", "--mode", "dp", "--gpus", "2", "--dp-backend", "native",
                               "--limit", "8"]
    assert [l.text() for l in lines] == ["vllm dp=1 tp=1", "sglang dp=2 tp=1 dp-backend=native --limit 8",
                                         "vllm dp=2 tp=2 --max-tokens 64"]


@pytest.mark.parametrize("line, message", [
    ("vllm", "expected ENGINE AXIS=N"),
    ("vllm --limit 4", "expected ENGINE AXIS=N"),
    ("trt dp=1", "unknown engine 'trt'"),
    ("vllm ring=2", "'ring=2' is not an axis"),
    ("vllm dp=two", "dp must be a whole number"),
    ("vllm dp=0", "dp must be a whole number of at least 1"),
    ("vllm dp=2 dp=4", "dp is given twice"),
    ("vllm dp=2 dp-backend=ring", "unknown data-parallel backend 'ring'"),
    ("vllm dp=2 router-policy=round_robin", "--router-policy is for --dp-backend router"),
    ("vllm dp=2 --mode dp", "--mode sets the layout, which the line's axes name"),
    ("vllm dp=2 --dp-backend=native", "--dp-backend sets the layout"),
    # the older format
    ("vllm single", "expected ENGINE MODE GPUS"),
    ("vllm dp two", "GPUS must be a whole number"),
    ("vllm dp 0", "GPUS must be at least 1"),
    ("vllm hybrid 4", "mode hybrid needs DP and TP"),
    ("vllm hybrid 4 2", "DP needs TP"),
    ("vllm dp 2 extra --limit 4", "DP needs TP"),
    ("vllm dp 2 1 2 oops", "neither DP/TP nor a flag"),
    ("vllm dp 2 --dp-backend ring", "unknown data-parallel backend 'ring'"),
    ("vllm dp 2 --engine-kwargs '{", "No closing quotation"),
])
def test_parse_sweep_refuses_bad_lines(line, message):
    """Every bad line is refused with its line number, before anything is submitted."""
    with pytest.raises(SweepError, match=re.escape(message)) as e:
        sweep.parse_sweep("vllm dp=1\n" + line, "my.txt")
    assert "my.txt line 2" in str(e.value)


def test_generate_layouts():
    """single is one device whatever --gpus says (once per engine); hybrid is every split with
    both factors above 1; the engine's own DP where it has one (SGLang offline); serving adds each
    engine's router at its default policy (or the policies asked for); a repeated layout is written
    once. The list is evaluator.plan.candidates', the one the local comparison runs."""
    from evaluator.plan import candidates
    lines = sweep.generate(["vllm", "sglang"], ["single", "dp", "tp", "hybrid"], [2, 4, 4], ["--limit", "8"])
    texts = [l.text() for l in lines]
    assert texts == [
        "vllm dp=1 tp=1 --limit 8", "vllm dp=2 tp=1 --limit 8", "vllm dp=1 tp=2 --limit 8",
        "sglang dp=1 tp=1 --limit 8", "sglang dp=2 tp=1 --limit 8", "sglang dp=2 tp=1 dp-backend=native --limit 8",
        "sglang dp=1 tp=2 --limit 8",
        "vllm dp=4 tp=1 --limit 8", "vllm dp=1 tp=4 --limit 8", "vllm dp=2 tp=2 --limit 8",
        "sglang dp=4 tp=1 --limit 8", "sglang dp=4 tp=1 dp-backend=native --limit 8", "sglang dp=1 tp=4 --limit 8",
        "sglang dp=2 tp=2 --limit 8"]
    assert [l.task for l in lines] == list(range(14))
    assert sweep.parse_sweep(sweep.format_sweep(lines, "comment")) == lines
    local = [c for n in (2, 4) for c in candidates(["vllm", "sglang"], n, "offline")]
    assert len({(c.engine, c.layout) for c in local}) == len(lines)
    served = sweep.generate(["vllm"], ["dp"], [2], [], workload="serve")
    assert [l.text() for l in served] == [
        "vllm dp=2 tp=1 --workload serve", "vllm dp=2 tp=1 dp-backend=native --workload serve",
        "vllm dp=2 tp=1 dp-backend=router router-policy=cache_aware --workload serve"]
    routed = sweep.generate(["vllm"], ["dp"], [2], [], workload="serve", native=False,
                            router_policies={"vllm": ("round_robin", "power_of_two")})
    assert [l.layout.label for l in routed] == ["2x1", "2x1 router round_robin", "2x1 router power_of_two"]
    assert sweep.parse_sweep(sweep.format_sweep(routed)) == routed


def test_index_ranges():
    assert sweep.index_ranges([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert sweep.index_ranges([3]) == "3"


def test_plan_arrays_groups_tasks_by_resources():
    """One array per resource request, indices are the tasks' own ids."""
    lines = sweep.parse_sweep("vllm single 1\nvllm dp 2\nvllm tp 2\nvllm dp 4\n"
                              "vllm single 1 --cpu-cores-per-device 2\n")
    plans = sweep.plan_arrays(lines, "auto", "auto", has_gpu_gres=True)
    assert [(p.tasks, p.gres, p.cpus_per_task) for p in plans] == [
        ((0, 4), "gpu:1", None), ((1, 2), "gpu:2", None), ((3,), "gpu:4", None)]
    # no GPU gres on the cluster: no --gres, and a CPU device is --cpu-cores-per-device cores
    plans = sweep.plan_arrays(lines, "auto", "auto", has_gpu_gres=False)
    assert [(p.tasks, p.gres, p.cpus_per_task) for p in plans] == [
        ((0,), None, 1), ((1, 2, 4), None, 2), ((3,), None, 4)]
    plans = sweep.plan_arrays(lines, "gpu:a100:{n}", "8", has_gpu_gres=False)
    assert [(p.tasks, p.resource_args()) for p in plans][0] == ((0, 4), ["--gres=gpu:a100:1", "--cpus-per-task=8"])


def _sweep_cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli(["-m", "launchers.sweep", *args], lock=False, timeout=120)


def test_cli_dry_run_writes_the_sweep_and_prints_the_commands(tmp_path):
    data = tmp_path / "d.parquet"
    data.write_bytes(b"PAR1")
    r = _sweep_cli("--engines", "vllm", "--modes", "single,dp,tp", "--gpus", "2", "--model", "Qwen/Qwen2.5-7B-Instruct",
                   "--data", str(data), "--results", str(tmp_path / "res"), "--sweep-id", "s", "--gres", "gpu:{n}",
                   "--max-parallel", "2", "--sbatch-args", "--partition gpu --time 01:00:00", "--", "--limit", "8")
    assert r.returncode == 0, r.stderr
    sweep_dir = tmp_path / "res" / "s"
    lines = sweep.read_sweep(sweep_dir)
    assert [l.text() for l in lines] == [
        f"vllm {layout} --model Qwen/Qwen2.5-7B-Instruct --data {data} --limit 8"
        for layout in ("dp=1 tp=1", "dp=2 tp=1", "dp=1 tp=2")]
    out = r.stdout
    assert "--array=0%2" in out and "--gres=gpu:1" in out and "--array=1-2%2" in out and "--gres=gpu:2" in out
    assert "--partition gpu --time 01:00:00" in out and f"--output={sweep_dir}/logs/%A_%a.log" in out
    assert "--dependency=afterany:<array ids>" in out and "evaluator.report" in out
    assert last_json(out)["submitted"] == [0, 1, 2]
    # the same sweep again is fine (a re-submission); a different one under that id is refused
    assert _sweep_cli("--engines", "vllm", "--modes", "single,dp,tp", "--gpus", "2", "--model",
                      "Qwen/Qwen2.5-7B-Instruct", "--data", str(data), "--results", str(tmp_path / "res"),
                      "--sweep-id", "s", "--gres", "none", "--", "--limit", "8").returncode == 0
    r = _sweep_cli("--engines", "vllm", "--modes", "dp", "--gpus", "4", "--results", str(tmp_path / "res"),
                   "--sweep-id", "s")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {sweep_dir} already holds a different sweep; choose another --sweep-id "
        f"(or re-submit it with --sweep-dir {sweep_dir})"]


@pytest.mark.parametrize("args, message", [
    (["--engines", "trt"], "unknown engine 'trt'"),
    (["--engines", "vllm", "--modes", "single,pp"], "unknown mode 'pp'"),
    (["--engines", "vllm", "--data", "/nonexistent.parquet"], "--data /nonexistent.parquet: no such file"),
    (["--engines", "vllm", "--modes", "hybrid", "--gpus", "3"], "the sweep has no runs"),
    (["--sweep-dir", "/nonexistent"], "no sweep.txt there"),
    (["--modes", "dp"], "give --engines"),
    (["--engines", "vllm", "--gres", "gpu:2"], "template with {n}"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    r = _sweep_cli(*args, "--results", str(tmp_path))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr


def _summary(run_id: str, mode: str, dp: int, tp: int, generate_s: float) -> dict:
    cfg = RunConfig(engine="vllm", layout=resolve(mode, dp * tp, dp, tp), model="/m", data="/d.parquet",
                    device="cpu", sampling=SamplingConfig(max_tokens=12), limit=6)
    return RunSummary(run_id=run_id, config=cfg, prompts=6, wall_s=10 + generate_s, startup_s=10.0,
                      generate_s=generate_s, output_tokens_per_s=72 / generate_s, prompt_tokens=600,
                      completion_tokens=72, strict_accuracy=0.5, flexible_accuracy=0.5,
                      replicas=(ReplicaTiming(0, "cpu:0", 10.0, generate_s, 6, 600, 72),), versions={},
                      device_name="cpu", started_at=f"2025-01-01T00:00:0{run_id}").to_dict()


@pytest.fixture
def fabricated_sweep(tmp_path) -> Path:
    """A sweep folder as SLURM leaves it: task 0 finished, 1 failed (exit 2), 2 started but was
    cancelled, 3 finished after an earlier failed attempt, 4 never ran, 5 exited 0 without a
    summary, 6 has config.json from an interrupted attempt."""
    d = tmp_path / "sw"
    (d / "logs").mkdir(parents=True)
    (d / "sweep.txt").write_text("vllm single 1 --device cpu\nvllm dp 2\nvllm tp 2\nvllm dp 2\nvllm hybrid 4 2 2\n"
                                 "vllm single 1\nvllm single 1\n")
    for task, (mode, dp, tp, g) in {0: ("single", 1, 1, 2.0), 3: ("dp", 2, 1, 1.0)}.items():
        (d / str(task)).mkdir()
        (d / str(task) / "summary.json").write_text(json.dumps(_summary(str(task), mode, dp, tp, g)))
    (d / "6").mkdir()
    (d / "6" / "config.json").write_text("{}")
    logs = {"10_0.log": "sweep task 0 of x\nsweep task 0: exit 0\n",
            "10_1.log": "sweep task 1 of x\nTraceback (most recent call last):\nerror: --model /m: no such model folder\n"
                        "sweep task 1: exit 2\n",
            "10_2.log": "sweep task 2 of x\nloading\nslurmstepd-vm: error: *** JOB 13 ON vm CANCELLED AT 2025-01-01 ***\n",
            "10_3.log": "sweep task 3 of x\nerror: no replica started\nsweep task 3: exit 1\n",
            "12_3.log": "sweep task 3 of x\nsweep task 3: exit 0\n",
            "10_5.log": "sweep task 5 of x\nsweep task 5: exit 0\n",
            "10_6.log": "sweep task 6 of x\nRuntimeError: engine died\n",
            "report-14.log": "not a task log\n"}
    for name, text in logs.items():
        (d / "logs" / name).write_text(text)
    return d


def test_task_statuses_from_a_fabricated_tree(fabricated_sweep):
    st = {s.task: s for s in sweep_report.task_statuses(fabricated_sweep)}
    assert {t: s.status for t, s in st.items()} == {0: "ok", 1: "failed", 2: "failed", 3: "ok", 4: "never ran",
                                                    5: "failed", 6: "failed"}
    assert st[1].reason == "exit 2: error: --model /m: no such model folder"
    assert st[2].reason.startswith("killed or cancelled before the end (no exit line): slurmstepd-vm: error: *** JOB 13")
    assert st[3].log.name == "12_3.log"          # the newest submission's log counts
    assert st[5].reason == "exited 0 but wrote no summary.json"
    assert st[6].reason == "killed or cancelled before the end (no exit line): RuntimeError: engine died"


def test_task_argv_skips_finished_resumes_interrupted(fabricated_sweep, capsys):
    d = str(fabricated_sweep)
    assert sweep.main(["--sweep-dir", d, "--task-argv", "0"]) == sweep.FINISHED_EXIT
    assert capsys.readouterr().out == ""
    assert sweep.main(["--sweep-dir", d, "--task-argv", "6"]) == 0
    assert capsys.readouterr().out.split("\0")[:-1] == ["--resume", str(fabricated_sweep / "6"), "--no-table"]
    assert sweep.main(["--sweep-dir", d, "--task-argv", "4"]) == 0
    assert capsys.readouterr().out.split("\0")[:-1] == [
        "--engine", "vllm", "--mode", "hybrid", "--gpus", "4", "--dp", "2", "--tp", "2",
        "--output-dir", str(fabricated_sweep), "--run-id", "4", "--no-table"]
    with pytest.raises(SystemExit) as e:
        sweep.main(["--sweep-dir", d, "--task-argv", "7"])
    assert e.value.code == 2 and "task 7 does not exist" in capsys.readouterr().err


def test_resubmission_leaves_finished_tasks_out(fabricated_sweep):
    r = _sweep_cli("--sweep-dir", str(fabricated_sweep), "--gres", "none")
    assert r.returncode == 0, r.stderr
    result = last_json(r.stdout)
    assert result["skipped"] == [0, 3] and result["submitted"] == [1, 2, 4, 5, 6]
    assert "--array=5-6 " in r.stdout and "--array=1-2 " in r.stdout and "--array=4 " in r.stdout


def test_report_prints_every_task_and_writes_csv_and_markdown(fabricated_sweep):
    r = run_cli(["-m", "evaluator.report", str(fabricated_sweep)], lock=False, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Sweep sw: 2/7 task(s) finished" in r.stdout
    assert r.stdout.count("failed") == 4 and "never ran" in r.stdout
    rows = list(csv.DictReader(open(fabricated_sweep / "report.csv")))
    assert [(row["task"], row["status"], row["layout"]) for row in rows] == [
        ("0", "ok", "1x1"), ("1", "failed", "2x1"), ("2", "failed", "1x2"), ("3", "ok", "2x1"),
        ("4", "never ran", "2x2"), ("5", "failed", "1x1"), ("6", "failed", "1x1")]
    assert float(rows[3]["speedup"]) == 2.0          # against the sweep's single-device run (task 0)
    assert rows[1]["note"] == "exit 2: error: --model /m: no such model folder"
    md = (fabricated_sweep / "report.md").read_text().splitlines()
    assert md[0] == "## Sweep sw: 2/7 task(s) finished"
    assert md[2].startswith("| task | status | engine | layout dp×tp |") and len(md) == 4 + 7
    assert md[4].startswith("| 0 | ok | vllm | 1x1 | cpu | 6 | 10.0 | 2.0 | 12.0 | 1.00 |")


# --- a real single-node SLURM ------------------------------------------------------------------

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 15) -> str:
    if not path.exists():
        return f"({path} missing)"
    return f"--- {path.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-n:])


@dataclass
class Slurm:
    dir: Path
    env: dict[str, str]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        r = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        assert not check or r.returncode == 0, f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def logs(self) -> str:
        return "\n".join(_tail(self.dir / "log" / name) for name in ("slurmctld.log", "slurmd.log"))

    def wait(self, *job_ids: str, timeout: float = 1800) -> None:
        """Until none of the jobs (array jobs included; all jobs when none given) is queued."""
        deadline = time.monotonic() + timeout
        select = ["-j", ",".join(job_ids)] if job_ids else []
        while True:
            r = self.run("squeue", "-h", "-o", "%i %T %R", *select, check=False)
            if r.returncode == 0 and not r.stdout.strip():
                return
            assert time.monotonic() < deadline, f"jobs still queued after {timeout} s:\n{r.stdout}\n{self.logs()}"
            time.sleep(3)

    def state(self, job_id: str) -> str:
        out = self.run("scontrol", "show", "job", job_id).stdout
        return re.search(r"JobState=(\S+)", out).group(1)


def _stop(procs: list[subprocess.Popen], conf: Path) -> None:
    """SIGTERM each daemon we started (newest first), SIGKILL what is left after 20 s; then any
    slurmstepd that our slurmd forked (found by our SLURM_CONF in its environment)."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
    marker = f"SLURM_CONF={conf}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() == "slurmstepd" and marker in (proc / "environ").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            continue     # gone meanwhile


def _slurm_conf(d: Path, node: str, ctld_port: int, slurmd_port: int, munge_socket: Path) -> str:
    host = node.split()[0].split("=", 1)[1]
    return f"""# generated by tests/test_slurm.py: one node (this machine), no cgroups, no accounting
ClusterName=evaltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
# containers: cgroup-based tracking and binding may not work; linuxproc follows the process tree
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
KillWait=10
# keep finished jobs visible to scontrol for the test's checks
MinJobAge=3600
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """munged + slurmctld + slurmd for this machine, as this session's own processes."""
    if os.geteuid() != 0:
        skip_or_fail("a local SLURM needs root (slurmd starts jobs as their users)")
    missing = [b for b in DAEMONS if not shutil.which(b)]
    if missing:
        r = subprocess.run(["bash", str(ROOT / "slurm" / "install_deps.sh")], capture_output=True, text=True,
                           timeout=1200)
        missing = [b for b in DAEMONS if not shutil.which(b)]
        if missing:
            why = (r.stderr or r.stdout).strip().splitlines()[-1:] or [f"exit {r.returncode}"]
            skip_or_fail(f"SLURM not installed ({', '.join(missing)} missing) and slurm/install_deps.sh failed: {why[0]}")
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool", "log"):
        (d / sub).mkdir(mode=0o700)
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(128))      # our own key: no system munged or key is touched
    key.chmod(0o600)
    sock = d / "munge" / "munge.sock"
    conf = d / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(conf), "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "EVAL_PYTHON": sys.executable, "EVAL_ENGINE_LOCK": LOCK}
    procs: list[subprocess.Popen] = []

    def start(*cmd: str) -> None:
        log = open(d / "log" / f"{Path(cmd[0]).name}.stdout", "w")
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("munged", "-F", "--force", f"--socket={sock}", f"--key-file={key}", f"--log-file={d}/log/munged.log",
              f"--pid-file={d}/munge/munged.pid", f"--seed-file={d}/munge/munged.seed")
        for _ in range(50):
            if sock.exists():
                break
            time.sleep(0.2)
        cred = subprocess.run(f"munge -n -S {sock} | unmunge -S {sock}", shell=True, capture_output=True, text=True)
        if cred.returncode != 0:
            skip_or_fail(f"munged did not start: {cred.stderr.strip()[:200]}\n{_tail(d / 'log' / 'munged.log')}")
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, env=env).stdout.splitlines()[0]
        conf.write_text(_slurm_conf(d, node, _free_port(), _free_port(), sock))
        start("slurmctld", "-D", "-i")
        start("slurmd", "-D", "-N", node.split()[0].split("=", 1)[1])
        cluster = Slurm(d, env)
        state = ""
        for _ in range(60):
            r = cluster.run("sinfo", "-h", "-o", "%T", check=False)
            state = r.stdout.strip()
            if state == "idle":
                break
            time.sleep(1)
        else:
            skip_or_fail(f"slurmctld/slurmd did not come up (node state {state!r}):\n{cluster.logs()}")
        yield cluster
        cluster.run("scancel", "--user", "root", check=False)   # only this cluster's jobs (SLURM_CONF)
        cluster.wait(timeout=120)
    finally:
        _stop(procs, conf)


def _sbatch(slurm: Slurm, *args: str) -> str:
    return slurm.run("sbatch", "--parsable", *args).stdout.strip().split(";")[0]


def _mtimes(sweep_dir: Path, tasks) -> dict[int, float]:
    return {t: (sweep_dir / str(t) / "summary.json").stat().st_mtime for t in tasks}


@pytest.fixture(scope="module")
def slurm_sweep(slurm, tiny_model, gsm8k_parquet, tmp_path_factory):
    """A real sweep: single, dp=2, tp=2 on vLLM-CPU, and a task whose model does not exist."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep_file = tmp / "layouts.txt"
    sweep_file.write_text("# three layouts of the tiny model, and one that must fail\n"
                          "vllm single 1\nvllm dp 2\nvllm tp 2\n"
                          f"vllm single 1 --model {tmp / 'no-such-model'}\n")
    t0 = time.monotonic()
    r = run_cli(["-m", "launchers.sweep", "--sweep-file", str(sweep_file), "--model", str(tiny_model),
                 "--data", str(gsm8k_parquet), "--results", str(tmp / "results"), "--sweep-id", "sw", "--submit",
                 "--", "--device", "cpu", "--max-tokens", "12", "--limit", "6", *FAST_CPU],
                lock=False, env=slurm.env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    submitted = last_json(r.stdout)
    slurm.wait(submitted["report_job"])
    print(f"\nsweep of 4 tasks on SLURM: {time.monotonic() - t0:.0f} s")
    return Path(submitted["sweep_dir"]), submitted


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_sweep_on_slurm_gives_one_merged_report(slurm, slurm_sweep):
    sweep_dir, submitted = slurm_sweep
    # one array per resource request: 1 core (tasks 0 and 3) and 2 cores (dp=2, tp=2)
    assert [(a["tasks"], a["gres"], a["cpus_per_task"]) for a in submitted["arrays"]] == [
        ([0, 3], None, 1), ([1, 2], None, 2)]
    assert slurm.state(submitted["report_job"]) == "COMPLETED"
    report_log = sweep_dir / "logs" / f"report-{submitted['report_job']}.log"
    table = report_log.read_text()
    print(table)
    assert "Sweep sw: 3/4 task(s) finished" in table
    rows = list(csv.DictReader(open(sweep_dir / "report.csv")))
    assert [(r["task"], r["status"], r["layout"], r["prompts"]) for r in rows] == [
        ("0", "ok", "1x1", "6"), ("1", "ok", "2x1", "6"), ("2", "ok", "1x2", "6"), ("3", "failed", "1x1", "")]
    assert rows[3]["note"].startswith("exit 2: error: --model") and "no such model folder" in rows[3]["note"]
    assert all(float(r["generate_s"]) > 0 and r["speedup"] for r in rows[:3])
    md = (sweep_dir / "report.md").read_text()
    assert md.count("| ok |") == 3 and md.count("| failed |") == 1
    # the other runs are whole despite the failed task
    for task in range(3):
        samples = (sweep_dir / str(task) / "samples.jsonl").read_text().splitlines()
        assert len(samples) == 6
        assert json.loads((sweep_dir / str(task) / "summary.json").read_text())["run_id"] == str(task)
    assert not (sweep_dir / "3").exists()
    # the same report from the command line
    r = run_cli(["-m", "evaluator.report", str(sweep_dir)], lock=False, timeout=120)
    assert r.returncode == 0 and "Sweep sw: 3/4 task(s) finished" in r.stdout


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_resubmitting_a_sweep_skips_finished_tasks(slurm, slurm_sweep):
    sweep_dir, _ = slurm_sweep
    before = _mtimes(sweep_dir, range(3))
    r = run_cli(["-m", "launchers.sweep", "--sweep-dir", str(sweep_dir), "--submit"], lock=False, env=slurm.env,
                timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    again = last_json(r.stdout)
    assert again["skipped"] == [0, 1, 2] and again["submitted"] == [3]
    assert [a["tasks"] for a in again["arrays"]] == [[3]]
    slurm.wait(again["report_job"])
    # submitted by hand, the finished tasks exit at once inside the job too
    job = _sbatch(slurm, "--array=0-2", f"--output={sweep_dir}/logs/%A_%a.log", f"--chdir={ROOT}",
                  str(ROOT / "slurm" / "sweep.sbatch"), str(sweep_dir))
    slurm.wait(job)
    for task in range(3):
        log = (sweep_dir / "logs" / f"{job}_{task}.log").read_text()
        assert "already finished" in log and log.rstrip().endswith(f"sweep task {task}: exit 0"), log
    assert _mtimes(sweep_dir, range(3)) == before
    rows = list(csv.DictReader(open(sweep_dir / "report.csv")))
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed"]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                found.append(f"{proc.name}: {(proc / 'cmdline').read_bytes()[:200]!r}")
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ray_cluster_job_runs_the_evaluator_and_stops_ray(slurm, tiny_model, gsm8k_parquet, tmp_path):
    """slurm/ray_cluster.sbatch on the one node there is: head, wait for the node, a dp=2 run
    through --ray-address, then no Ray process of the job left."""
    out = tmp_path / "results"
    job = _sbatch(slurm, "--nodes=1", f"--output={tmp_path}/ray-%j.log", f"--chdir={ROOT}",
                  str(ROOT / "slurm" / "ray_cluster.sbatch"), "--engine", "vllm", "--device", "cpu", "--mode", "dp",
                  "--gpus", "2", "--model", str(tiny_model), "--data", str(gsm8k_parquet), "--output-dir", str(out),
                  "--run-id", "ray", "--max-tokens", "12", "--limit", "4", "--no-table", *FAST_CPU)
    slurm.wait(job)
    log = (tmp_path / f"ray-{job}.log").read_text()
    assert slurm.state(job) == "COMPLETED", log[-4000:]
    summary = json.loads((out / "ray" / "summary.json").read_text())
    port = 20000 + 100 * (int(job) % 127)
    assert summary["config"]["ray_address"].endswith(f":{port}") and summary["prompts"] == 4
    assert "Ray cluster: 1/1 node(s)" in log and "stopping Ray" in log and "ray cluster job: exit 0" in log
    assert _processes_mentioning(f"/tmp/ray-{job}/") == []
