"""A stored single-device run standing in for the engine part of a profile: an offline run gives its
batch (prompts, mean prompt and answer lengths, generate time), a serving run each load level
(requests in flight or rate, median TPOT and TTFT, the level's mean lengths). No engine starts.

    python -m evaluator.profile --from-run results/compare-x/vllm-single --out profile.json
"""
from __future__ import annotations

import json
from pathlib import Path

from evaluator.errors import UsageError
from evaluator.predict.records import OfflineObservation, ServeObservation
from evaluator.records import RecordError, RunSummary


def read_summary(folder: Path) -> RunSummary:
    path = Path(folder) / "summary.json"
    if not path.is_file():
        raise UsageError(f"--from-run {folder}: no summary.json there (not a finished run)")
    try:
        return RunSummary.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, RecordError) as e:
        raise UsageError(f"--from-run {folder}: summary.json cannot be read ({e})") from None


def observations(s: RunSummary, source: str) -> tuple[list[OfflineObservation], list[ServeObservation]]:
    """What one single-device run measured, as calibration rows."""
    c = s.config
    if c.dp * c.tp != 1:
        raise UsageError(f"--from-run {source}: a {c.dp}x{c.tp} run; a profile is one device's (use the single layout)")
    if s.resumed:
        raise UsageError(f"--from-run {source}: a resumed run times only its last attempt; use a run that ran whole")
    prompts = s.timed_prompts or s.prompts
    if c.workload == "offline":
        if not prompts or not s.generate_s:
            raise UsageError(f"--from-run {source}: no prompts were timed")
        tokens = s.timed_completion_tokens or s.completion_tokens
        return [OfflineObservation(prompts, s.prompt_tokens / s.prompts, tokens / prompts, s.generate_s, source)], []
    levels = []
    for level in s.levels:
        if level.get("level_kind") not in ("concurrency", "rate") or not level.get("ok") or level.get("tpot_ms_p50") is None:
            continue
        value = level["level_value"]
        if value is None or value == float("inf"):
            continue
        prompt = level.get("prompt_tokens_mean") or s.prompt_tokens / max(s.prompts, 1)
        output = level.get("output_tokens_mean") or (c.sampling.max_tokens if c.sampling.ignore_eos
                                                     else s.completion_tokens / max(s.prompts, 1))
        ttft = level.get("ttft_ms_p50")
        pct = c.serve.slo_percentile if c.serve else 90.0
        tail = f"{pct:g}" if f"tpot_ms_p{pct:g}" in level else None      # levels keep p50, p90 and p99
        levels.append(ServeObservation(
            level["level_kind"], float(value), float(prompt), float(output), level["tpot_ms_p50"] / 1000,
            ttft / 1000 if ttft is not None else None, f"{source} {level['level']}", float(pct) if tail else None,
            level[f"tpot_ms_p{tail}"] / 1000 if tail and level.get(f"tpot_ms_p{tail}") is not None else None,
            level[f"ttft_ms_p{tail}"] / 1000 if tail and level.get(f"ttft_ms_p{tail}") is not None else None))
    if not levels:
        raise UsageError(f"--from-run {source}: no finished concurrency or rate level with a TPOT")
    return [], levels
