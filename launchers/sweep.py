"""Layout sweeps on SLURM: write a sweep file (one evaluator run per line), submit it as job
arrays plus one report job that waits for them, and skip tasks that already finished.

    python -m launchers.sweep --engines vllm,sglang --modes single,dp,tp --gpus 2 \
        --model models/qwen2.5-coder-0.5b-instruct --data data/gsm8k_test.parquet --submit

The sweep file holds one run per line, `ENGINE AXIS=N... [EVALUATOR FLAGS...]` (the layout by its
named axes, e.g. `vllm dp=2 tp=1 --limit 64`; launchers.sweepfile), with `#` comments; task i is
the i-th run line (0-based), so SLURM_ARRAY_TASK_ID = i picks it. Each task writes
RESULTS/SWEEP_ID/<i>/ (the evaluator's --output-dir/--run-id) and logs to
RESULTS/SWEEP_ID/logs/<array job>_<i>.log. The sweep folder keeps its own sweep.txt, so
`--sweep-dir RESULTS/SWEEP_ID --submit` re-submits it later: tasks whose summary.json exists are
left out, and a task folder with config.json but no summary.json is resumed (--resume).

Why one array per resource request: an array job has a single --gres/--cpus-per-task for all of
its tasks, and asking every task for the largest layout's GPUs would leave most of them idle.
So tasks are grouped by what they need (gpu:N, or N device-worth of cores on hosts without GPU)
and each group is one array whose indices are the tasks' own ids (`--array=0,3-4%K`): a task's
id, folder and log name are the same whichever array runs it, and the report job depends on
all arrays (`--dependency=afterany:A:B`). `--gres auto` asks for gpu:N only where the cluster
has GPU gres (sinfo), so the same command works on a cluster without GPUs.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from evaluator.cli import split_passthrough
from evaluator.layout import MODES
from launchers.engines.base import ENGINES
from launchers.sweepfile import (LOGS, SWEEP_FILE, SweepError, SweepLine, finished, format_sweep, generate,
                                 layout_flag, parse_sweep, read_sweep, task_argv, whole_number)

ROOT = Path(__file__).resolve().parents[1]
SWEEP_SBATCH = ROOT / "slurm" / "sweep.sbatch"
FINISHED_EXIT = 3     # --task-argv: the task already has its summary.json, nothing to run


def index_ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (sbatch --array syntax)."""
    parts, ids = [], sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


def cluster_has_gpu_gres() -> bool:
    """True when some node of the cluster offers gres gpu (sinfo's GRES column)."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"warning: cannot ask sinfo about GPU gres ({e}); submitting without --gres", file=sys.stderr)
        return False
    if out.returncode != 0:
        print(f"warning: sinfo failed ({out.stderr.strip()[:200]}); submitting without --gres", file=sys.stderr)
        return False
    return any("gpu" in field for field in out.stdout.split())


@dataclass(frozen=True)
class ArrayPlan:
    """One sbatch array: the tasks that share one resource request."""
    tasks: tuple[int, ...]
    gres: str | None
    cpus_per_task: int | None

    def resource_args(self) -> list[str]:
        out = []
        if self.gres:
            out.append(f"--gres={self.gres}")
        if self.cpus_per_task:
            out.append(f"--cpus-per-task={self.cpus_per_task}")
        return out


def plan_arrays(lines: list[SweepLine], gres: str, cpus_per_device: str, has_gpu_gres: bool) -> list[ArrayPlan]:
    """Group tasks by resource request. gres: auto | none | a template with {n} (gpu:a100:{n}).
    cpus_per_device: auto | N. auto gives no CPU request where GPUs are requested (the cluster's
    default applies) and otherwise the line's --cpu-cores-per-device per device, because on a
    host without GPU a device is that many cores."""
    groups: dict[tuple, list[int]] = {}
    for line in lines:
        if gres == "none" or (gres == "auto" and not has_gpu_gres):
            g = None
        elif gres == "auto":
            g = f"gpu:{line.layout.devices}"
        else:
            g = gres.format(n=line.layout.devices)
        per_device = line.flag("--cpu-cores-per-device", "1") if cpus_per_device == "auto" else cpus_per_device
        devices = line.layout.devices
        cpus = None if g and cpus_per_device == "auto" else devices * whole_number(per_device, "cores per device",
                                                                                   f"task {line.task}")
        groups.setdefault((g, cpus), []).append(line.task)
    return [ArrayPlan(tuple(tasks), g, cpus) for (g, cpus), tasks in groups.items()]


def _sbatch(argv: list[str]) -> str:
    """Run sbatch --parsable; return the job id or raise with sbatch's own message."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        raise SweepError(f"cannot run sbatch: {e}") from None
    if out.returncode != 0:
        msg = " ".join(out.stderr.split()) or f"exit code {out.returncode}"
        raise SweepError(f"sbatch refused the job: {msg[:300]}")
    return out.stdout.strip().split(";")[0]


def sbatch_commands(sweep_dir: Path, plans: list[ArrayPlan], max_parallel: int,
                    python: str, extra: list[str]) -> tuple[list[list[str]], list[str]]:
    """(array commands, report command without its --dependency)."""
    name = f"gsm8k-{sweep_dir.name}"
    # jobs see the submitter's environment (sbatch's default), plus where the repo and its python are
    env = f"--export=ALL,EVAL_PYTHON={python},EVAL_REPO={ROOT}"
    arrays = []
    for plan in plans:
        spec = index_ranges(list(plan.tasks)) + (f"%{max_parallel}" if max_parallel else "")
        arrays.append(["sbatch", "--parsable", f"--job-name={name}", f"--array={spec}",
                       f"--output={sweep_dir / LOGS}/%A_%a.log", f"--chdir={ROOT}", env,
                       *plan.resource_args(), *extra, str(SWEEP_SBATCH), str(sweep_dir)])
    report = ["sbatch", "--parsable", f"--job-name={name}-report", f"--output={sweep_dir / LOGS}/report-%j.log",
              f"--chdir={ROOT}", env, *extra,
              "--wrap", shlex.join([python, "-m", "evaluator.report", str(sweep_dir)])]
    return arrays, report


def submit(sweep_dir: Path, lines: list[SweepLine], args: argparse.Namespace) -> dict:
    pending = [line for line in lines if not finished(sweep_dir, line.task)]
    skipped = sorted({line.task for line in lines} - {line.task for line in pending})
    result = {"sweep_dir": str(sweep_dir), "tasks": len(lines), "skipped": skipped,
              "submitted": [line.task for line in pending], "arrays": [], "report_job": None}
    print(f"sweep {sweep_dir}: {len(lines)} task(s), {len(skipped)} already finished"
          + (f" (skipped: {index_ranges(skipped)})" if skipped else ""))
    if not pending:
        print(f"nothing to submit; report: python -m evaluator.report {sweep_dir}")
        return result
    has_gpu = cluster_has_gpu_gres() if args.gres == "auto" else False
    plans = plan_arrays(pending, args.gres, args.cpus_per_device, has_gpu)
    try:
        extra = shlex.split(args.sbatch_args)
    except ValueError as e:
        raise SweepError(f"--sbatch-args: {e}") from None
    array_cmds, report_cmd = sbatch_commands(sweep_dir, plans, args.max_parallel, args.python, extra)
    if not args.submit:
        print("dry run (add --submit to submit):")
        for cmd in array_cmds:
            print("  " + shlex.join(cmd))
        print("  " + shlex.join(report_cmd[:2] + ["--dependency=afterany:<array ids>"] + report_cmd[2:]))
        return result
    (sweep_dir / LOGS).mkdir(parents=True, exist_ok=True)   # sbatch does not create --output folders
    for plan, cmd in zip(plans, array_cmds):
        job = _sbatch(cmd)
        result["arrays"].append({"job_id": job, "tasks": list(plan.tasks), "gres": plan.gres,
                                 "cpus_per_task": plan.cpus_per_task})
        print(f"array job {job}: tasks {index_ranges(list(plan.tasks))} "
              f"(gres {plan.gres or 'none'}, cpus/task {plan.cpus_per_task or 'default'})")
    deps = ":".join(a["job_id"] for a in result["arrays"])
    result["report_job"] = _sbatch(report_cmd[:2] + [f"--dependency=afterany:{deps}"] + report_cmd[2:])
    print(f"report job {result['report_job']}: after all arrays -> {sweep_dir / LOGS}/report-{result['report_job']}.log")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m launchers.sweep",
        description="Write a sweep of evaluator runs over layouts and submit it to SLURM as job arrays plus a "
                    "report job. Everything after -- is passed to every run (e.g. -- --limit 64 --max-tokens 256).",
        epilog="Re-submit what did not finish: python -m launchers.sweep --sweep-dir results/SWEEP_ID --submit",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("what to run (generate, or --sweep-file, or --sweep-dir)")
    g.add_argument("--engines", help="comma-separated, e.g. vllm,sglang")
    g.add_argument("--modes", default="single,dp,tp", help="comma-separated modes (hybrid = every dp x tp split)")
    g.add_argument("--gpus", default="2", help="comma-separated GPU counts per layout, e.g. 2,4")
    g.add_argument("--workload", choices=("offline", "serve"), default="offline",
                   help="what every run measures (serve: add its levels after --, e.g. -- --concurrency 1,16)")
    g.add_argument("--no-native", action="store_true", help="leave out the engines' own data parallelism")
    g.add_argument("--router-policies", metavar="POLICY[,POLICY]",
                   help="serve: the policies of the router layouts (dp=N servers behind the engine's own router), "
                        "in the routers' names: round_robin, power_of_two, cache_aware, random (default: each "
                        "router's own default, cache_aware)")
    g.add_argument("--no-router", action="store_true", help="leave out the router layouts")
    g.add_argument("--model", help="model folder or hub id, added to every run")
    g.add_argument("--data", help="GSM8K parquet, added to every run")
    g.add_argument("--sweep-file", help="a hand-written sweep file instead of --engines/--modes/--gpus; "
                                        "--model/--data/-- flags are added in front of each line's own flags")
    g.add_argument("--sweep-dir", help="an existing sweep folder: re-submit its unfinished tasks")
    o = p.add_argument_group("where")
    o.add_argument("--results", default="results", help="sweeps are written to RESULTS/SWEEP_ID/")
    o.add_argument("--sweep-id", help="folder name (default: sweep-<time>)")
    s = p.add_argument_group("SLURM")
    s.add_argument("--submit", action="store_true", help="submit; without it, write the sweep and print the commands")
    s.add_argument("--max-parallel", type=int, default=0, help="at most K tasks of each array at once (0 = no limit)")
    s.add_argument("--gres", default="auto",
                   help="auto = gpu:N per layout when the cluster has GPU gres, else none; none = never; "
                        "or a template with {n}, e.g. gpu:a100:{n}")
    s.add_argument("--cpus-per-device", default="auto",
                   help="--cpus-per-task = devices x this; auto = none with GPUs, else the run's "
                        "--cpu-cores-per-device (a CPU device is that many cores)")
    s.add_argument("--sbatch-args", default="", help="more sbatch options for every job, e.g. "
                                                     "'--partition gpu --time 02:00:00 --account proj'")
    s.add_argument("--python", default=sys.executable, help="python the jobs run (needs the evaluator's packages)")
    s.add_argument("--task-argv", type=int, metavar="ID", help=argparse.SUPPRESS)  # used by slurm/sweep.sbatch
    return p


def _split_list(value: str, name: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise SweepError(f"{name} is empty")
    return items


def _common_flags(args: argparse.Namespace, passthrough: list[str]) -> list[str]:
    bad = layout_flag(passthrough)
    if bad:
        raise SweepError(f"{bad} after -- sets the layout, which each sweep line names by its axes")
    flags = []
    if args.model:
        # local folders become absolute: jobs run from the repo root, maybe on another node
        flags += ["--model", str(Path(args.model).resolve()) if Path(args.model).exists() else args.model]
    if args.data:
        if not Path(args.data).is_file():
            raise SweepError(f"--data {args.data}: no such file")
        flags += ["--data", str(Path(args.data).resolve())]
    return flags + passthrough


def lines_from_args(args: argparse.Namespace, passthrough: list[str]) -> list[SweepLine]:
    flags = _common_flags(args, passthrough)
    if args.sweep_file:
        if args.engines:
            raise SweepError("give either --sweep-file or --engines, not both")
        path = Path(args.sweep_file)
        if not path.is_file():
            raise SweepError(f"--sweep-file {path}: no such file")
        parsed = parse_sweep(path.read_text(), str(path))
        # common flags first: argparse keeps the last value, so a line's own flags win
        lines = [SweepLine(l.task, l.engine, l.layout, tuple(flags) + l.flags) for l in parsed]
    else:
        if not args.engines:
            raise SweepError("give --engines (to generate a sweep), --sweep-file or --sweep-dir")
        engines, modes = _split_list(args.engines, "--engines"), _split_list(args.modes, "--modes")
        for e in engines:
            if e not in ENGINES:
                raise SweepError(f"--engines: unknown engine {e!r}; choose from {', '.join(sorted(ENGINES))}")
        for m in modes:
            if m not in MODES:
                raise SweepError(f"--modes: unknown mode {m!r}; choose from {', '.join(MODES)}")
        gpus = [whole_number(v, "each --gpus value", "--gpus") for v in _split_list(args.gpus, "--gpus")]
        lines = generate(engines, modes, gpus, flags, args.workload, not args.no_native, router_policies(args, engines))
    if not lines:
        raise SweepError("the sweep has no runs (hybrid needs a GPU count with a split dp x tp, both > 1)")
    return lines


def router_policies(args: argparse.Namespace, engines: list[str]) -> dict[str, tuple[str, ...]] | None:
    """--no-router: none; --router-policies: those for every engine; else each router's default."""
    if args.no_router:
        return {}
    if not args.router_policies:
        return None
    return {e: tuple(_split_list(args.router_policies, "--router-policies")) for e in engines}


def prepare(args: argparse.Namespace, passthrough: list[str]) -> tuple[Path, list[SweepLine]]:
    """The sweep folder and its runs; a new sweep's sweep.txt is written here."""
    if args.sweep_dir:
        if args.engines or args.sweep_file or passthrough:
            raise SweepError("--sweep-dir re-submits a written sweep: give no --engines, --sweep-file or -- flags")
        sweep_dir = Path(args.sweep_dir).resolve()
        return sweep_dir, read_sweep(sweep_dir)
    lines = lines_from_args(args, passthrough)
    sweep_id = args.sweep_id or dt.datetime.now().strftime("sweep-%Y%m%d-%H%M%S")
    sweep_dir = (Path(args.results) / sweep_id).resolve()
    if (sweep_dir / SWEEP_FILE).is_file():
        if [l.argv() for l in read_sweep(sweep_dir)] != [l.argv() for l in lines]:
            raise SweepError(f"{sweep_dir} already holds a different sweep; choose another --sweep-id "
                             f"(or re-submit it with --sweep-dir {sweep_dir})")
        return sweep_dir, lines
    (sweep_dir / LOGS).mkdir(parents=True, exist_ok=True)
    source = f"from {args.sweep_file}" if args.sweep_file else "generated"
    (sweep_dir / SWEEP_FILE).write_text(format_sweep(lines, f"{source} by python -m launchers.sweep, "
                                                            f"{dt.datetime.now():%Y-%m-%d %H:%M:%S}"))
    return sweep_dir, lines


def main(argv: list[str] | None = None) -> int:
    argv, passthrough = split_passthrough(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.task_argv is not None:
            if not args.sweep_dir:
                raise SweepError("--task-argv needs --sweep-dir")
            lines = read_sweep(args.sweep_dir)
            if not 0 <= args.task_argv < len(lines):
                raise SweepError(f"task {args.task_argv} does not exist: {args.sweep_dir} has {len(lines)} task(s)")
            if finished(args.sweep_dir, args.task_argv):
                return FINISHED_EXIT
            # NUL-separated: flags may hold spaces (JSON engine kwargs); the sbatch reads it with mapfile -d ''
            sys.stdout.write("".join(a + "\0" for a in task_argv(args.sweep_dir, lines[args.task_argv])))
            return 0
        if args.max_parallel < 0:
            raise SweepError(f"--max-parallel must be 0 or more (got {args.max_parallel})")
        if args.cpus_per_device != "auto":
            whole_number(args.cpus_per_device, "--cpus-per-device", "--cpus-per-device")
        if args.gres not in ("auto", "none") and "{n}" not in args.gres:
            raise SweepError(f"--gres {args.gres}: use auto, none or a template with {{n}} such as gpu:{{n}}")
        sweep_dir, lines = prepare(args, passthrough)
        result = submit(sweep_dir, lines, args)
    except SweepError as e:
        parser.exit(2, f"error: {e}\n")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
