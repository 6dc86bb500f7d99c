"""The sweep file: one evaluator run per line, `ENGINE AXIS=N... [EVALUATOR FLAGS...]`, the layout
named by its axes (evaluator.layout: dp, tp, pp, ep, dp-backend, router-policy; an axis left out
takes its default), with `#` comments; task i is the i-th run line (0-based), so
SLURM_ARRAY_TASK_ID = i picks it. Written from the same layout enumeration as
`python -m evaluator.compare` (evaluator.plan.candidates), read back by the array tasks, and told
what each task should run (a new run, or --resume). Lines of the older format, `ENGINE MODE GPUS
[DP TP] [FLAGS...]`, are still read (sweep folders written before keep re-submitting).

    python -c "from launchers.sweepfile import parse_sweep; print(parse_sweep('vllm dp=2 tp=1 --limit 8'))"
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from evaluator.layout import MODES, SPEC_KEYS, Layout, LayoutError, parse_spec, resolve
from evaluator.plan import candidates
from launchers.engines.base import ENGINES

SWEEP_FILE, LOGS, SUMMARY, CONFIG = "sweep.txt", "logs", "summary.json", "config.json"

FORMAT_HELP = """\
# One evaluator run per line: ENGINE AXIS=N... [EVALUATOR FLAGS...], the layout by its axes:
#   dp=N tp=N (pp=N ep=N, dp-backend=ray|native|router, router-policy=POLICY where not the default)
# Task i (0-based, counting run lines only) is SLURM array index i; it writes <this folder>/<i>/.
# Relative paths in flags are relative to the repo root (the jobs' working directory)."""

# flags that would set the layout a second time, beside its axes
LAYOUT_FLAGS = ("--mode", "--gpus", "--dp", "--tp", "--dp-backend", "--router-policy")


class SweepError(ValueError):
    """Bad sweep input or a refused submission: printed as one line, exit code 2."""


@dataclass(frozen=True)
class SweepLine:
    task: int
    engine: str
    layout: Layout
    flags: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        """The evaluator's arguments for this run, without where it writes."""
        return ["--engine", self.engine, *self.layout.argv(), *self.flags]

    def text(self) -> str:
        return shlex.join([self.engine, *self.layout.spec().split(), *self.flags])

    def flag(self, name: str, default: str | None = None) -> str | None:
        """Last value of --name in the flags (argparse keeps the last one too)."""
        value = default
        for i, tok in enumerate(self.flags):
            if tok == name and i + 1 < len(self.flags):
                value = self.flags[i + 1]
            elif tok.startswith(name + "="):
                value = tok.split("=", 1)[1]
        return value


def whole_number(token: str, what: str, where: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise SweepError(f"{where}: {what} must be a whole number (got {token!r})") from None
    if value < 1:
        raise SweepError(f"{where}: {what} must be at least 1 (got {value})")
    return value


def layout_flag(flags: list[str] | tuple[str, ...]) -> str | None:
    """The first flag of `flags` that sets the layout (the axes do that), or None."""
    return next((f.split("=")[0] for f in flags if f.split("=")[0] in LAYOUT_FLAGS), None)


def _old_line(tokens: list[str], where: str, raw: str) -> tuple[Layout, list[str]]:
    """`MODE GPUS [DP TP] [FLAGS...]` (the format before named axes): the layout, with the
    --dp-backend / --router-policy of its flags taken into it, and the other flags."""
    mode = tokens[0]
    if len(tokens) < 2:
        raise SweepError(f"{where}: expected ENGINE MODE GPUS [DP TP] [FLAGS...], got {raw.strip()!r}")
    gpus = whole_number(tokens[1], "GPUS", where)
    rest = tokens[2:]
    dp = tp = None
    if rest and not rest[0].startswith("-"):
        if len(rest) < 2 or rest[1].startswith("-"):
            raise SweepError(f"{where}: DP needs TP after it (ENGINE MODE GPUS DP TP)")
        dp, tp, rest = whole_number(rest[0], "DP", where), whole_number(rest[1], "TP", where), rest[2:]
    if rest and not rest[0].startswith("-"):
        raise SweepError(f"{where}: {rest[0]!r} is neither DP/TP nor a flag (flags start with -)")
    if mode == "hybrid" and dp is None:
        raise SweepError(f"{where}: mode hybrid needs DP and TP (e.g. 'vllm hybrid 4 2 2')")
    own = {"--dp-backend": "ray", "--router-policy": None}
    flags, i = [], 0
    while i < len(rest):          # the last value wins, as argparse would have it
        name, eq, value = rest[i].partition("=")
        if name in own and (eq or i + 1 < len(rest)):
            own[name] = value if eq else rest[i + 1]
            i += 1 if eq else 2
            continue
        flags.append(rest[i])
        i += 1
    try:
        return resolve(mode, gpus, dp, tp, own["--dp-backend"], own["--router-policy"]), flags
    except LayoutError as e:
        raise SweepError(f"{where}: {e}") from None


def parse_sweep(text: str, source: str = SWEEP_FILE) -> list[SweepLine]:
    lines = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        where = f"{source} line {lineno}"
        try:
            tokens = shlex.split(raw, comments=True)
        except ValueError as e:
            raise SweepError(f"{where}: {e}") from None
        if not tokens:
            continue
        engine = tokens[0]
        if engine not in ENGINES:
            raise SweepError(f"{where}: unknown engine {engine!r}; choose from {', '.join(sorted(ENGINES))}")
        if len(tokens) > 1 and tokens[1] in MODES:
            layout, flags = _old_line(tokens[1:], where, raw)
        else:
            n = next((k for k, t in enumerate(tokens) if k and t.startswith("-")), len(tokens))
            axes = tokens[1:n]
            if not axes:
                raise SweepError(f"{where}: expected ENGINE AXIS=N... [FLAGS...] (e.g. 'vllm dp=2 tp=1'), got "
                                 f"{raw.strip()!r}")
            try:
                layout = parse_spec(axes)
            except LayoutError as e:
                raise SweepError(f"{where}: {e}") from None
            flags = tokens[n:]
            bad = layout_flag(flags)
            if bad:
                raise SweepError(f"{where}: {bad} sets the layout, which the line's axes name "
                                 f"({', '.join(SPEC_KEYS)})")
        lines.append(SweepLine(len(lines), engine, layout, tuple(flags)))
    return lines


def generate(engines: list[str], modes: list[str], gpus: list[int], flags: list[str],
             workload: str = "offline", native: bool = True,
             router_policies: dict[str, tuple[str, ...]] | None = None) -> list[SweepLine]:
    """engines x modes x GPU counts, enumerated by evaluator.plan.candidates (the same list
    `python -m evaluator.compare` runs locally): single once per engine, dp, tp, every hybrid
    split, the engine's own DP where it has one for the workload, and (serve) its router per
    policy; repeats written once."""
    seen, lines = set(), []
    extra = ["--workload", workload] if workload != "offline" else []
    for n in gpus:
        for c in candidates(engines, n, workload, tuple(modes), native, router_policies):
            if (c.engine, c.layout) in seen:
                continue
            seen.add((c.engine, c.layout))
            lines.append(SweepLine(len(lines), c.engine, c.layout, tuple(extra + flags)))
    return lines


def format_sweep(lines: list[SweepLine], comment: str = "") -> str:
    head = FORMAT_HELP + (f"\n# {comment}" if comment else "")
    return head + "\n" + "".join(line.text() + "\n" for line in lines)


def read_sweep(sweep_dir: str | Path) -> list[SweepLine]:
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise SweepError(f"{sweep_dir}: no {SWEEP_FILE} there, not a sweep folder")
    return parse_sweep(path.read_text(), str(path))


def finished(sweep_dir: str | Path, task: int) -> bool:
    return (Path(sweep_dir) / str(task) / SUMMARY).is_file()


def task_argv(sweep_dir: str | Path, line: SweepLine) -> list[str]:
    """The evaluator's full argument list for one task. A folder with config.json but no
    summary.json was interrupted (killed, time limit): resume it instead of starting over."""
    sweep_dir = Path(sweep_dir).resolve()
    run = sweep_dir / str(line.task)
    if (run / CONFIG).is_file():
        return ["--resume", str(run), "--no-table"]
    return line.argv() + ["--output-dir", str(sweep_dir), "--run-id", str(line.task), "--no-table"]
