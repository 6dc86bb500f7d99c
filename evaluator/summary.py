"""A finished offline run's summary: accuracy (with 95% Wilson intervals) over every prompt, speed
over what the last attempt generated, and every attempt of the run as recorded on disk.

Why speed covers only the last attempt: a run resumed after 1,000 of 1,319 prompts generated 319
in its last window; dividing all 1,319 prompts' tokens by that window would print ~4x the real
speed. Such a run is marked resumed, and tables leave it out of speedups and verdicts.

    python -c "from evaluator.store import RunDir; from evaluator.summary import attempts_of; print(attempts_of(RunDir('results/x')))"
"""
from __future__ import annotations

from evaluator.hosts import HostFacts
from evaluator.records import Attempt, ReplicaTiming, RunConfig, RunSummary, Sample
from evaluator.intervals import wilson_interval
from evaluator.store import RunDir


def attempts_of(run_dir: RunDir) -> tuple[Attempt, ...]:
    """Every attempt of the run: its notes (attempts.jsonl) and what it left in partial.jsonl
    (each record names its attempt and its chunk's start and end) or requests.jsonl, so an
    attempt that was killed before it could note its end still counts what it generated and in
    how long."""
    notes = run_dir.read_attempts()
    records = run_dir.read_partial_records() + run_dir.read_requests()
    out = []
    for k in sorted(notes):
        note = notes[k]
        mine = [r for r in records if r.get("attempt", 1) == k]
        starts = [r["start"] for r in mine if "start" in r]
        ends = [r["end"] for r in mine if "end" in r]
        if "levels_done" in note:       # serving: the load levels this attempt finished
            generate_s = sum(note["levels_done"].values())
        else:
            generate_s = (max(ends) - min(starts)) if starts and ends else 0.0
        finished = bool(note.get("finished"))
        out.append(Attempt(started_at=note.get("started_at", ""), prompts=len(mine),
                           startup_s=note.get("startup_s", 0.0), generate_s=generate_s,
                           completion_tokens=sum(r["completion_tokens"] for r in mine),
                           wall_s=note["wall_s"] if finished and "wall_s" in note else lived_s(note, ends),
                           finished=finished))
    return tuple(out)


def lived_s(note: dict, ends: list[float]) -> float:
    """How long a killed attempt held its devices: from its first stamp to its last sign of life
    (a note, or a chunk or request it finished); the devices were paid for all of it."""
    first = note.get("first_t")
    if first is None:
        return note.get("wall_s", 0.0)
    return max([note.get("last_t", first), *ends]) - first


def _mean(values: list[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(run_id: str, cfg: RunConfig, samples: list[Sample], replicas: list[ReplicaTiming],
              wall_s: float, started_at: str, failures: list[str], rerun: int, resumed: int,
              host: HostFacts, attempts: tuple[Attempt, ...]) -> RunSummary:
    from launchers.engines.base import engine_env
    from evaluator.memory import predict_for
    from evaluator.pool import engine_spec
    working = [r for r in replicas if r.prompts > 0]
    generate_s = max((r.generate_s for r in working), default=0.0)
    fastest = min((r.generate_s for r in working), default=0.0)
    timed_tokens = sum(r.completion_tokens for r in replicas)
    multi = cfg.sampling.n > 1
    n = len(samples)
    strict = sum(s.strict_correct for s in samples)
    flexible = sum(s.flexible_correct for s in samples)
    return RunSummary(
        run_id=run_id, config=cfg, prompts=n, wall_s=wall_s,
        startup_s=max((r.startup_s for r in replicas), default=0.0), generate_s=generate_s,
        output_tokens_per_s=timed_tokens / generate_s if generate_s else 0.0,
        prompt_tokens=sum(s.prompt_tokens for s in samples),
        completion_tokens=sum(s.completion_tokens for s in samples),
        strict_accuracy=strict / n if n else 0.0, flexible_accuracy=flexible / n if n else 0.0,
        strict_ci=wilson_interval(strict, n), flexible_ci=wilson_interval(flexible, n),
        strict_maj_accuracy=_mean([bool(s.strict_maj_correct) for s in samples]) if multi else None,
        flexible_maj_accuracy=_mean([bool(s.flexible_maj_correct) for s in samples]) if multi else None,
        replicas=tuple(replicas), versions=host.versions, device_name=host.device_name,
        started_at=started_at, straggler_gap=(generate_s - fastest) / generate_s if generate_s else 0.0,
        failures=tuple(failures), rerun_prompts=rerun, resumed_prompts=resumed,
        timed_prompts=sum(r.prompts for r in replicas), timed_completion_tokens=timed_tokens,
        attempts=attempts, engine_env=engine_env(cfg.engine, engine_spec(cfg)), memory=predict_for(cfg))
