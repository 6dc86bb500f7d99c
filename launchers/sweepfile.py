"""The sweep file: one evaluator run per line, `ENGINE MODE GPUS [DP TP] [EVALUATOR FLAGS...]`, with
`#` comments; task i is the i-th run line (0-based), so SLURM_ARRAY_TASK_ID = i picks it. Written
from the same layout enumeration as `python -m evaluator.compare` (evaluator.layout.candidates),
read back by the array tasks, and told what each task should run (a new run, or --resume).

    python -c "from launchers.sweepfile import parse_sweep; print(parse_sweep('vllm dp 2 --limit 8'))"
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from evaluator.layout import MODES, candidates
from launchers.engines.base import ENGINES

SWEEP_FILE, LOGS, SUMMARY, CONFIG = "sweep.txt", "logs", "summary.json", "config.json"

FORMAT_HELP = """\
# One evaluator run per line: ENGINE MODE GPUS [DP TP] [EVALUATOR FLAGS...]
# Task i (0-based, counting run lines only) is SLURM array index i; it writes <this folder>/<i>/.
# Relative paths in flags are relative to the repo root (the jobs' working directory)."""


class SweepError(ValueError):
    """Bad sweep input or a refused submission: printed as one line, exit code 2."""


@dataclass(frozen=True)
class SweepLine:
    task: int
    engine: str
    mode: str
    gpus: int
    dp: int | None = None
    tp: int | None = None
    flags: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        """The evaluator's arguments for this run, without where it writes."""
        out = ["--engine", self.engine, "--mode", self.mode, "--gpus", str(self.gpus)]
        if self.dp is not None:
            out += ["--dp", str(self.dp), "--tp", str(self.tp)]
        return out + list(self.flags)

    def text(self) -> str:
        fields = [self.engine, self.mode, str(self.gpus)]
        if self.dp is not None:
            fields += [str(self.dp), str(self.tp)]
        return shlex.join(fields + list(self.flags))

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
        if len(tokens) < 3:
            raise SweepError(f"{where}: expected ENGINE MODE GPUS [DP TP] [FLAGS...], got {raw.strip()!r}")
        engine, mode = tokens[0], tokens[1]
        if engine not in ENGINES:
            raise SweepError(f"{where}: unknown engine {engine!r}; choose from {', '.join(sorted(ENGINES))}")
        if mode not in MODES:
            raise SweepError(f"{where}: unknown mode {mode!r}; choose from {', '.join(MODES)}")
        gpus = whole_number(tokens[2], "GPUS", where)
        rest = tokens[3:]
        dp = tp = None
        if rest and not rest[0].startswith("-"):
            if len(rest) < 2 or rest[1].startswith("-"):
                raise SweepError(f"{where}: DP needs TP after it (ENGINE MODE GPUS DP TP)")
            dp, tp, rest = whole_number(rest[0], "DP", where), whole_number(rest[1], "TP", where), rest[2:]
        if rest and not rest[0].startswith("-"):
            raise SweepError(f"{where}: {rest[0]!r} is neither DP/TP nor a flag (flags start with -)")
        if mode == "hybrid" and dp is None:
            raise SweepError(f"{where}: mode hybrid needs DP and TP (e.g. 'vllm hybrid 4 2 2')")
        lines.append(SweepLine(len(lines), engine, mode, gpus, dp, tp, tuple(rest)))
    return lines


def generate(engines: list[str], modes: list[str], gpus: list[int], flags: list[str],
             workload: str = "offline", native: bool = True) -> list[SweepLine]:
    """engines x modes x GPU counts, enumerated by evaluator.layout.candidates (the same list
    `python -m evaluator.compare` runs locally): single once per engine, dp, tp, every hybrid
    split, and the engine's own DP where it has one for the workload; repeats written once."""
    seen, lines = set(), []
    extra = ["--workload", workload] if workload != "offline" else []
    for n in gpus:
        for c in candidates(engines, n, workload, tuple(modes), native):
            key = (c.engine, c.mode, c.gpus, c.dp, c.tp, c.dp_backend)
            if key in seen:
                continue
            seen.add(key)
            hybrid = c.mode == "hybrid"
            own = ["--dp-backend", c.dp_backend] if c.dp_backend != "ray" else []
            lines.append(SweepLine(len(lines), c.engine, c.mode, c.gpus, c.dp if hybrid else None,
                                   c.tp if hybrid else None, tuple(own + extra + flags)))
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
