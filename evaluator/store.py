"""Results on disk: results/<run-id>/{config.json, replicas.json, partial.jsonl, samples.jsonl, summary.json}.

config.json is written before any work; replicas.json says, once each replica's engine is up, where
it runs (rank, host, pid, process group, devices, start-up seconds: which process to inspect or
kill); partial.jsonl gets every finished chunk appended and
fsync'd (a crash loses at most the chunks in flight, and --resume re-runs only those);
samples.jsonl and summary.json are written atomically (temp file, fsync, rename) and summary.json
last, so its presence means the run finished.

    python -c "from evaluator.store import RunDir; print(RunDir('results/x').finished)"
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from evaluator.records import RunConfig, RunSummary, Sample

CONFIG, REPLICAS, PARTIAL, SAMPLES, SUMMARY = "config.json", "replicas.json", "partial.jsonl", "samples.jsonl", "summary.json"


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def finished(self) -> bool:
        return (self.path / SUMMARY).exists()

    def write_config(self, config: RunConfig, extra: dict[str, Any] | None = None) -> None:
        atomic_write(self.path / CONFIG, json.dumps({"config": config.to_dict(), **(extra or {})}, indent=2) + "\n")

    def read_config(self) -> RunConfig:
        return RunConfig.from_dict(json.loads((self.path / CONFIG).read_text())["config"])

    def write_replicas(self, replicas: list[dict[str, Any]]) -> None:
        """The replicas started so far (rewritten whole, atomically, as each one comes up)."""
        atomic_write(self.path / REPLICAS, json.dumps({"replicas": replicas}, indent=2) + "\n")

    def read_replicas(self) -> list[dict[str, Any]]:
        path = self.path / REPLICAS
        return json.loads(path.read_text())["replicas"] if path.exists() else []

    def append_chunk(self, records: Iterable[dict[str, Any]]) -> None:
        """One write + fsync per chunk: a line is either whole on disk or absent."""
        text = "".join(json.dumps(r) + "\n" for r in records)
        with open(self.path / PARTIAL, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def read_partial(self) -> dict[int, dict[str, Any]]:
        """index -> record for every whole line; a torn last line (killed mid-write) is ignored
        and cut off, so later appends start on a clean line."""
        path = self.path / PARTIAL
        if not path.exists():
            return {}
        data = path.read_bytes()
        whole = data[:data.rfind(b"\n") + 1]
        if len(whole) != len(data):
            with open(path, "r+b") as f:
                f.truncate(len(whole))
        done = {}
        for line in whole.decode().splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["index"]] = r
        return done

    def write_samples(self, samples: list[Sample]) -> None:
        atomic_write(self.path / SAMPLES, "".join(json.dumps(s.to_dict()) + "\n" for s in samples))

    def read_samples(self) -> list[Sample]:
        return [Sample.from_dict(json.loads(line)) for line in (self.path / SAMPLES).read_text().splitlines() if line]

    def write_summary(self, summary: RunSummary) -> None:
        atomic_write(self.path / SUMMARY, json.dumps(summary.to_dict(), indent=2) + "\n")

    def read_summary(self) -> RunSummary:
        return RunSummary.from_dict(json.loads((self.path / SUMMARY).read_text()))
