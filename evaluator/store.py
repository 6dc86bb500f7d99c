"""Results on disk: results/<run-id>/

    config.json     the run's settings and the fingerprint of its data and model, before any work
    attempts.jsonl  one line per event of each attempt (begin, engines up, finished)
    replicas.json   where each replica runs (rank, host, pid, process group, devices, start-up s):
                    which process to inspect or kill; rewritten as each one comes up
    partial.jsonl   every finished chunk, appended and fsync'd (a crash loses at most the chunks
                    in flight; --resume re-runs only those); serving runs: requests.jsonl, one
                    line per finished request of every load level
    samples.jsonl   the scored answers       } written atomically (temp file, fsync, rename),
    summary.json    the run's summary        } summary.json last: its presence means the run finished

    python -c "from evaluator.store import RunDir; print(RunDir('results/x').finished)"
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from evaluator.records import RunConfig, RunSummary, Sample

CONFIG, ATTEMPTS, REPLICAS, PARTIAL, REQUESTS = "config.json", "attempts.jsonl", "replicas.json", "partial.jsonl", "requests.jsonl"
SAMPLES, SUMMARY, LOGS, HEARTBEAT = "samples.jsonl", "summary.json", "logs", ".heartbeat"


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


def append_lines(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """One write + fsync: every line is either whole on disk or absent. A write that fails (a full
    disk) is cut back to where the file ended, so no torn line is left for later appends to follow
    (unbuffered, so nothing half-written is left in a buffer either)."""
    data = memoryview("".join(json.dumps(r) + "\n" for r in records).encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every whole line; a torn last line (killed mid-write) is ignored and cut off, so later
    appends start on a clean line."""
    if not path.exists():
        return []
    data = path.read_bytes()
    whole = data[:data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(whole))
    return [json.loads(line) for line in whole.decode().splitlines() if line.strip()]


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def finished(self) -> bool:
        return (self.path / SUMMARY).exists()

    def write_config(self, config: RunConfig, extra: dict[str, Any] | None = None) -> None:
        atomic_write(self.path / CONFIG, json.dumps({"config": config.to_dict(), **(extra or {})}, indent=2) + "\n")

    def read_config_file(self) -> dict[str, Any]:
        return json.loads((self.path / CONFIG).read_text())

    def read_config(self) -> RunConfig:
        return RunConfig.from_dict(self.read_config_file()["config"])

    def write_replicas(self, replicas: list[dict[str, Any]]) -> None:
        """The replicas started so far (rewritten whole, atomically, as each one comes up)."""
        atomic_write(self.path / REPLICAS, json.dumps({"replicas": replicas}, indent=2) + "\n")

    def read_replicas(self) -> list[dict[str, Any]]:
        path = self.path / REPLICAS
        return json.loads(path.read_text())["replicas"] if path.exists() else []

    # -- attempts --------------------------------------------------------------------------
    def begin_attempt(self, started_at: str) -> int:
        """Number the new attempt (1, 2, ...) and note when it began; an earlier attempt that died
        without noting its end gets its last heartbeat noted first (how long it held the devices)."""
        notes = self.read_attempts()
        beat = self.path / HEARTBEAT
        try:
            last, seen = int(beat.read_text().strip() or 0), beat.stat().st_mtime
        except (OSError, ValueError):
            last, seen = 0, None
        if seen is not None and last in notes and not notes[last].get("finished"):
            append_lines(self.path / ATTEMPTS, [{"attempt": last, "t": seen, "last_seen": True}])
        k = max(notes, default=0) + 1
        self.note_attempt(k, started_at=started_at)
        return k

    @contextlib.contextmanager
    def heartbeat(self, attempt: int, every_s: float = 2.0):
        """While the block runs, a thread touches .heartbeat every few seconds: a killed attempt's
        last sign of life, read by the next attempt (a SIGKILL leaves no other trace of its end)."""
        beat = self.path / HEARTBEAT
        beat.write_text(str(attempt))
        stop = threading.Event()

        def touch():
            while not stop.wait(every_s):
                try:
                    os.utime(beat)
                except OSError:
                    pass
        thread = threading.Thread(target=touch, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()

    def note_attempt(self, attempt: int, **fields: Any) -> None:
        """One line of the attempt's life, stamped (t: epoch seconds), so an attempt killed before
        it could note its end still shows how long it held its devices."""
        append_lines(self.path / ATTEMPTS, [{"attempt": attempt, "t": time.time(), **fields}])

    def read_attempts(self) -> dict[int, dict[str, Any]]:
        """attempt -> its notes merged (later keys win), with first_t / last_t: its first and last stamp."""
        out: dict[int, dict[str, Any]] = {}
        for line in read_lines(self.path / ATTEMPTS):
            note = out.setdefault(line["attempt"], {})
            t = line.get("t")
            note.update(line)
            if t is not None:
                note.setdefault("first_t", t)
                note["last_t"] = t
        return out

    # -- offline chunks and serving requests -----------------------------------------------
    def append_chunk(self, records: Iterable[dict[str, Any]]) -> None:
        append_lines(self.path / PARTIAL, records)

    def read_partial_records(self) -> list[dict[str, Any]]:
        return read_lines(self.path / PARTIAL)

    def read_partial(self) -> dict[int, dict[str, Any]]:
        """index -> its finished record (the latest, should an index appear twice)."""
        return {r["index"]: r for r in self.read_partial_records()}

    def append_requests(self, records: Iterable[dict[str, Any]]) -> None:
        append_lines(self.path / REQUESTS, records)

    def read_requests(self) -> list[dict[str, Any]]:
        return read_lines(self.path / REQUESTS)

    def log_path(self, name: str) -> Path:
        return self.path / LOGS / name

    # -- results -----------------------------------------------------------------------------
    def write_samples(self, samples: list[Sample]) -> None:
        atomic_write(self.path / SAMPLES, "".join(json.dumps(s.to_dict()) + "\n" for s in samples))

    def read_samples(self) -> list[Sample]:
        return [Sample.from_dict(json.loads(line)) for line in (self.path / SAMPLES).read_text().splitlines() if line]

    def write_summary(self, summary: RunSummary) -> None:
        atomic_write(self.path / SUMMARY, json.dumps(summary.to_dict(), indent=2) + "\n")

    def read_summary(self) -> RunSummary:
        return RunSummary.from_dict(json.loads((self.path / SUMMARY).read_text()))
