"""A rich live display of the replicas while they start and generate: one bar per replica and
one for the whole run, advanced as chunks come back.

    python -m evaluator ...   # shown on stderr while the run goes
"""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class RunProgress:
    def __init__(self, replicas: int, total: int, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                                 console=self.console, transient=False)
        self.total = self.progress.add_task("all prompts", total=total, note="")
        self.tasks = {r: self.progress.add_task(f"replica {r}", total=None, note="starting engine")
                      for r in range(replicas)}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def __call__(self, event: str, data: dict) -> None:
        p = self.progress
        if event == "ready":
            p.update(self.tasks[data["rank"]], note=f"ready in {data['startup_s']:.1f} s ({data['devices']})")
        elif event == "generating":
            for rank, planned in data["planned"].items():
                p.update(self.tasks[rank], total=planned or None, note="generating")
        elif event == "chunk":
            task = self.tasks[data["rank"]]
            p.advance(task, data["prompts"])
            p.advance(self.total, data["prompts"])
            t = p.tasks[task]
            if t.total is not None and t.completed > t.total:
                p.update(task, total=t.completed)   # it took over a dead replica's prompts
        elif event == "failed":
            p.update(self.tasks[data["rank"]], note=f"[red]failed: {data['reason'][:80]}")
        elif event == "warning":
            self.console.print(f"[yellow]warning:[/] {data['message']}")
