"""A rich live display while a run goes: offline, one bar per replica and one for all prompts,
advanced as chunks come back; serving, one bar per load level, advanced as requests finish.

    python -m evaluator ...   # shown on stderr while the run goes
"""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from evaluator.events import (ChunkDone, Event, GenerationStarted, LevelDone, LevelStarted, ReplicaFailed,
                              ReplicaReady, RequestDone, Warning)


class RunProgress:
    def __init__(self, replicas: int, total: int, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                                 console=self.console, transient=False)
        self.total = total
        self.all = None
        self.level = None
        self.tasks = {r: self.progress.add_task(f"replica {r}", total=None, note="starting engine")
                      for r in range(replicas)}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        p = self.progress
        match event:
            case ReplicaReady(rank=rank, startup_s=s, devices=devices, compile=compile_state):
                p.update(self.tasks[rank], note=f"ready in {s:.1f} s ({devices}, compile {compile_state})")
            case GenerationStarted(planned=planned):
                self.all = p.add_task("all prompts", total=self.total, note="")
                for rank, n in planned.items():
                    p.update(self.tasks[rank], total=n or None, note="generating")
            case ChunkDone(rank=rank, prompts=n):
                task = self.tasks[rank]
                p.advance(task, n)
                if self.all is not None:
                    p.advance(self.all, n)
                t = p.tasks[task]
                if t.total is not None and t.completed > t.total:
                    p.update(task, total=t.completed)   # it took over a dead replica's prompts
            case LevelStarted(label=label, position=k, levels=n, requests=requests):
                title = "warm-up (untimed)" if k == 0 else f"level {k}/{n} {label}"
                self.level = p.add_task(title, total=requests, note="")
            case RequestDone(rank=rank):
                if self.level is not None:
                    p.advance(self.level, 1)
                if rank in self.tasks:      # -1: no replica known (a router chose it, or none was left)
                    p.update(self.tasks[rank], note="serving")
            case LevelDone(summary=line):
                if self.level is not None:
                    p.update(self.level, note=line)
            case ReplicaFailed(rank=rank, reason=why):
                p.update(self.tasks[rank], note=f"[red]failed: {escape(why[:80])}")
            case Warning(message=message):
                self.console.print(f"[yellow]warning:[/] {escape(message)}")
