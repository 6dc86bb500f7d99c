"""Every layout's prediction from one calibration: the offline batch's generate time, or each serving
level's TPOT and TTFT and the capacity at the SLOs, with the terms that make them up, ranked. The
layout is a small input of its own (replicas, devices each, how replicas share the traffic, the
engine's limits), so a richer layout record maps onto it in one place.

    python -m evaluator.compare --predict --profile profile.json --dry-run ...   # prints this ranking
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from evaluator.predict import model as M
from evaluator.predict.records import ModelShape


@dataclass(frozen=True)
class LayoutInput:
    """What the model needs of a layout: dp replicas of tp devices; dp_backend ray (an engine per Ray
    actor, the client balancing), native (the engine's own DP behind one endpoint) or router (a router
    process in front of the replicas). All three put dp engines to work: the model splits the load
    evenly and has no term for the front ends that differ between them."""
    label: str
    dp: int
    tp: int
    dp_backend: str = "ray"
    limits: M.Limits = field(default_factory=M.Limits)

    @property
    def devices(self) -> int:
        return self.dp * self.tp


@dataclass(frozen=True)
class Workload:
    """What the layouts are asked: offline, `prompts` prompts; serving, levels of `level_kind`."""
    kind: str                         # "offline" or "serve"
    prompts: int
    prompt_tokens: float              # mean per request
    output_tokens: float              # mean per request
    level_kind: str = "concurrency"
    levels: tuple[float, ...] = ()
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None


@dataclass(frozen=True)
class LayoutPrediction:
    label: str
    devices: int
    workload: str
    generate_s: float | None = None                 # offline: the slowest replica's batch
    levels: tuple[dict, ...] = ()                   # serving: {level, tpot_s, ttft_s, batch, saturated, output_tokens_per_s}
    capacity_rps: float | None = None               # serving with SLOs: the highest rate within them
    parts: dict[str, float] = field(default_factory=dict)      # seconds by term (offline: whole batch; serving: one step)
    roofline_efficiency: float | None = None        # the floor of a step / the predicted step
    bound: str = ""                                 # "memory" or "compute" (the heaviest step)

    @property
    def score(self) -> float:
        """Lower ranks first: offline generate seconds; serving, minus output tokens/s per device
        at the best level (minus capacity per device when the SLOs are given)."""
        if self.workload == "offline":
            return self.generate_s if self.generate_s is not None else math.inf
        if self.capacity_rps is not None:
            return -self.capacity_rps / self.devices
        best = max((l["output_tokens_per_s"] for l in self.levels if not l["saturated"]), default=0.0)
        return -best / self.devices

    def headline(self) -> str:
        if self.workload == "offline":
            return f"generate {self.generate_s:.2f} s"
        parts = []
        if self.levels:
            light = self.levels[0]
            parts.append(f"TPOT {1000 * light['tpot_s']:.2f} ms @{light['level']}")
        if len(self.levels) > 1:
            heavy = self.levels[-1]
            parts.append(f"{1000 * heavy['tpot_s']:.2f} ms @{heavy['level']}" + (" (saturated)" if heavy["saturated"] else ""))
        if self.capacity_rps is not None:
            parts.append(f"holds {self.capacity_rps:.3g} req/s within the SLOs")
        return ", ".join(parts) or "no level"

    def terms(self) -> str:
        text = M.shares(self.parts)
        if self.bound:
            text += f"; {self.bound}-bound"
        if self.roofline_efficiency is not None:
            text += f", {100 * self.roofline_efficiency:.0f}% of the roofline"
        return text

    def to_dict(self) -> dict:
        return {**asdict(self), "terms": self.terms(), "headline": self.headline()}


def predict(m: ModelShape, cal: M.Calibration, layout: LayoutInput, work: Workload) -> LayoutPrediction:
    """One layout's prediction for the workload."""
    if work.kind == "offline":
        per_replica = math.ceil(work.prompts / layout.dp)       # contiguous shards: the first replicas get one more
        p = M.offline(m, cal, layout.tp, per_replica, work.prompt_tokens, work.output_tokens, layout.limits)
        context = work.prompt_tokens + work.output_tokens / 2
        floor = M.roofline_s(m, cal, layout.tp, p.batch, context)
        return LayoutPrediction(layout.label, layout.devices, "offline", generate_s=p.generate_s, parts=p.parts,
                                roofline_efficiency=floor / p.step.total_s if p.step.total_s else None,
                                bound="memory" if p.step.memory_bound else "compute")
    levels = []
    for value in work.levels:
        lp = M.serve_level(m, cal, layout.tp, layout.dp, work.level_kind, value, work.prompt_tokens,
                           work.output_tokens, layout.limits)
        in_flight = lp.batch * layout.dp
        e2e = lp.ttft_s + max(0.0, work.output_tokens - 1) * lp.tpot_s
        rate = value if work.level_kind == "rate" else (in_flight / e2e if e2e and math.isfinite(e2e) else 0.0)
        levels.append({"level": lp.level, "tpot_s": lp.tpot_s, "ttft_s": lp.ttft_s, "batch": lp.batch,
                       "saturated": lp.saturated, "output_tokens_per_s": 0.0 if lp.saturated else rate * work.output_tokens,
                       "terms": M.shares(lp.step.attributed())})
    cap = None
    if work.slo_ttft_s is not None or work.slo_tpot_s is not None:
        cap = M.capacity(m, cal, layout.tp, layout.dp, work.prompt_tokens, work.output_tokens, layout.limits,
                         work.slo_ttft_s, work.slo_tpot_s)
    # the terms of the heaviest level, or of the capacity's rate when no level is given
    kind, value = (work.level_kind, work.levels[-1]) if work.levels else ("rate", cap) if cap else (None, None)
    heavy = M.serve_level(m, cal, layout.tp, layout.dp, kind, value, work.prompt_tokens, work.output_tokens,
                          layout.limits) if kind else None
    floor = M.roofline_s(m, cal, layout.tp, heavy.batch, work.prompt_tokens + work.output_tokens / 2) if heavy else None
    return LayoutPrediction(layout.label, layout.devices, "serve", levels=tuple(levels), capacity_rps=cap,
                            parts=heavy.step.attributed() if heavy else {},
                            roofline_efficiency=floor / heavy.step.total_s if heavy and heavy.step.total_s else None,
                            bound=("memory" if heavy.step.memory_bound else "compute") if heavy else "")


def ranked(predictions: list[LayoutPrediction]) -> list[LayoutPrediction]:
    return sorted(predictions, key=lambda p: (p.score, p.devices, p.label))


def describe_calibration(cal: M.Calibration) -> list[str]:
    lines = [f"calibration: memory {cal.bandwidth_bytes_per_s / 1e9:.3g} GB/s ({cal.bandwidth_source}); fitted "
             f"{cal.flops_per_s / 1e12:.3g} TFLOP/s effective, {1e3 * cal.step_overhead_s:.3g} ms per step, "
             f"{1e6 * cal.per_seq_s:.3g} us per sequence per step"
             + (f", server {1e3 * cal.server_step_s:.3g} ms per step" if cal.server_step_s else "")
             + (f", TTFT +{1e3 * cal.ttft_fixed_s:.3g} ms" if cal.ttft_fixed_s else "")
             + f"; all-reduce: {cal.allreduce.source or 'none measured'}"]
    if cal.fit:
        worst = max(cal.fit, key=lambda f: abs(f[1] / f[2] - 1))
        lines.append(f"  fitted on {len(cal.fit)} single-device measurement(s): median error "
                     f"{100 * (cal.fit_error or 0):.1f}%, the worst {worst[0]} ({100 * (worst[1] / worst[2] - 1):+.0f}%)")
    return lines


def render(predictions: list[LayoutPrediction], cal: M.Calibration, title: str) -> list[str]:
    """The ranking as lines: rank, layout, the prediction, its terms."""
    lines = [title, *describe_calibration(cal)]
    for k, p in enumerate(ranked(predictions), 1):
        lines.append(f"  {k}. {p.label} ({p.devices} device{'s' if p.devices > 1 else ''}): {p.headline()} "
                     f"[{p.terms()}]")
    return lines
