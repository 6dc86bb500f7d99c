"""The performance model: one engine step of a replica with tp devices, from what it moves and computes.

    step = overhead + per-sequence host work x batch + max(weights + KV, compute) + all-reduces

    weights   the bytes of its 1/tp of every matrix (not the input table: a step reads B rows of it)
              / the device's memory bandwidth (the probe's reading, else the datasheet)
    KV        batch x context x KV bytes per token per device / the same bandwidth
    compute   (batch + prefill tokens in the step) x (2 x parameters + attention) / tp / effective FLOP/s
    all-reduce  2 per layer of (tokens in the step x hidden x bytes), each as the probe timed it
              between tp devices (else the datasheet link: 2(n-1)/n x bytes / bandwidth per direction)

max(): a step is bound by memory or by compute, whichever takes longer (the roofline). Three numbers
are fitted on one device's measurements (profile.json, evaluator.predict.fit): the effective FLOP/s, the fixed overhead per
step and the host work per sequence per step (scheduler, sampler, output processing), in relative
error, so a layout's prediction holds what one device measured and adds what the layout changes:
tp divides weights, KV and compute and adds all-reduces; dp divides the batch. The engine's own
limits (most sequences and tokens per step, the KV cache) cap the batch. Offline: prefill in
chunks, then waves of decode steps. Serving: per server, TPOT is one step at the level's batch with
the prefills that arrive meanwhile; TTFT the prefills ahead of a request; a rate level's batch
follows from Little's law; capacity is the highest rate whose predictions meet the SLOs.

    python -c "from evaluator.predict.model import DATASHEETS; print(DATASHEETS['H200'])"
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from evaluator.predict.records import AllReducePoint, ModelShape


@dataclass(frozen=True)
class Datasheet:
    name: str
    memory_bytes_per_s: float
    link_bytes_per_s: float           # per direction between two devices (NVLink: half the bidirectional figure)
    flops_per_s: float                # dense bf16


# what the vendors print; used only where no probe measured the device
DATASHEETS = {
    "H200": Datasheet("NVIDIA H200 (HBM3e 4.8 TB/s, NVLink 900 GB/s, 989 TFLOP/s bf16)", 4.8e12, 450e9, 989e12),
    "H100": Datasheet("NVIDIA H100 SXM (HBM3 3.35 TB/s, NVLink 900 GB/s, 989 TFLOP/s bf16)", 3.35e12, 450e9, 989e12),
    "A100": Datasheet("NVIDIA A100 SXM (HBM2e 2.04 TB/s, NVLink 600 GB/s, 312 TFLOP/s bf16)", 2.04e12, 300e9, 312e12),
}


def datasheet(device_name: str) -> Datasheet | None:
    return next((d for key, d in DATASHEETS.items() if key in device_name.upper()), None)


@dataclass(frozen=True)
class AllReduceCost:
    """Seconds of one all-reduce: the probe's points (log-log between sizes, the largest point's
    bandwidth beyond it, its smallest time below), else the datasheet link."""
    points: tuple[AllReducePoint, ...] = ()
    link_bytes_per_s: float | None = None
    source: str = ""

    def seconds(self, devices: int, nbytes: float) -> float:
        if devices <= 1 or nbytes <= 0:
            return 0.0
        mine = sorted((p for p in self.points if p.devices == devices), key=lambda p: p.bytes)
        if not mine and self.points:          # another size of group: the nearest, by the ring's traffic
            nearest = min({p.devices for p in self.points}, key=lambda n: abs(n - devices))
            scale = (devices - 1) / devices / ((nearest - 1) / nearest)
            return scale * self.seconds(nearest, nbytes)
        if mine:
            if nbytes <= mine[0].bytes:
                return mine[0].seconds
            if nbytes >= mine[-1].bytes:
                return mine[-1].seconds * nbytes / mine[-1].bytes
            for lo, hi in zip(mine, mine[1:]):
                if lo.bytes <= nbytes <= hi.bytes:
                    f = math.log(nbytes / lo.bytes) / math.log(hi.bytes / lo.bytes)
                    return math.exp(math.log(lo.seconds) + f * math.log(hi.seconds / lo.seconds))
        if self.link_bytes_per_s:
            return 2 * (devices - 1) / devices * nbytes / self.link_bytes_per_s
        return 0.0


@dataclass(frozen=True)
class Calibration:
    """The device as the model sees it: measured or datasheet bandwidth, fitted compute and overheads."""
    bandwidth_bytes_per_s: float
    bandwidth_source: str
    flops_per_s: float                # effective, fitted
    step_overhead_s: float            # fitted: per step, whatever the batch
    per_seq_s: float                  # fitted: per sequence per step, on the host
    server_step_s: float = 0.0        # fitted from serving TPOT: the server's own work per step beyond the engine's
    ttft_fixed_s: float = 0.0         # fitted from serving TTFT: HTTP, tokenising, queueing in front of the engine
    allreduce: AllReduceCost = field(default_factory=AllReduceCost)
    peak_flops_per_s: float | None = None     # datasheet, for the roofline only
    fit: tuple[tuple[str, float, float], ...] = ()   # (what, predicted, measured) of every calibration row
    batch_fixed_s: float = 0.0        # an offline run's own seconds besides the engine's steps: dispatch, collection, storing
    tail_tpot: float = 1.0            # serving rows: the SLO percentile of TPOT over its median (measured, median ratio)
    tail_ttft: float = 1.0            # the same for TTFT

    @property
    def fit_error(self) -> float | None:
        """Median |predicted - measured| / measured over the rows it was fitted on."""
        errs = sorted(abs(p - m) / m for _, p, m in self.fit if m)
        return errs[len(errs) // 2] if errs else None


@dataclass(frozen=True)
class Limits:
    """What one engine of a layout schedules at most (None: no limit known)."""
    max_seqs: int | None = None
    max_batched_tokens: int | None = None
    kv_tokens: int | None = None      # per replica

    def batch(self, wanted: float, seq_tokens: float) -> float:
        cap = [wanted]
        if self.max_seqs:
            cap.append(self.max_seqs)
        if self.kv_tokens and seq_tokens > 0:
            cap.append(max(1, self.kv_tokens // math.ceil(seq_tokens)))
        return max(0.0, min(cap))


@dataclass(frozen=True)
class Terms:
    """One step's parts, in seconds. weights and KV, or compute, bind (whichever is longer)."""
    weights_s: float
    kv_s: float
    compute_s: float
    overhead_s: float
    allreduce_s: float

    @property
    def memory_bound(self) -> bool:
        return self.weights_s + self.kv_s >= self.compute_s

    @property
    def total_s(self) -> float:
        return self.overhead_s + max(self.weights_s + self.kv_s, self.compute_s) + self.allreduce_s

    def attributed(self) -> dict[str, float]:
        """The parts that add up to the step: the binding side of the roofline, overhead, all-reduce."""
        device = {"weights": self.weights_s, "KV": self.kv_s, "compute": 0.0} if self.memory_bound else \
            {"weights": 0.0, "KV": 0.0, "compute": self.compute_s}
        return {**device, "overhead": self.overhead_s, "all-reduce": self.allreduce_s}

    def scaled(self, k: float) -> "Terms":
        return Terms(*(k * v for v in (self.weights_s, self.kv_s, self.compute_s, self.overhead_s, self.allreduce_s)))

    def __add__(self, other: "Terms") -> "Terms":
        return Terms(*(a + b for a, b in zip(
            (self.weights_s, self.kv_s, self.compute_s, self.overhead_s, self.allreduce_s),
            (other.weights_s, other.kv_s, other.compute_s, other.overhead_s, other.allreduce_s))))


ZERO = Terms(0, 0, 0, 0, 0)


def shares(parts: dict[str, float]) -> str:
    """'weights 61%, KV 9%, all-reduce 14%, overhead 16%' (parts under 0.5% left out)."""
    total = sum(parts.values()) or 1.0
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in parts.items() if v / total >= 0.005)


# --- one step, a prefill, an offline batch, a serving level -------------------------------------
def step(m: ModelShape, cal: Calibration, tp: int, batch: float, context: float, prefill_tokens: float = 0.0) -> Terms:
    """One engine step of `batch` decoding sequences of `context` tokens, plus prefill_tokens of prompts."""
    bw = cal.bandwidth_bytes_per_s
    tokens = batch + prefill_tokens
    return Terms(weights_s=m.weights_read(tp) / bw,
                 kv_s=batch * context * m.kv_bytes_per_token(tp) / bw,
                 compute_s=tokens * m.flops_per_token(context) / tp / cal.flops_per_s,
                 overhead_s=cal.step_overhead_s + cal.per_seq_s * batch,
                 allreduce_s=2 * m.layers * cal.allreduce.seconds(tp, m.allreduce_bytes(tokens)))


def prefill(m: ModelShape, cal: Calibration, tp: int, tokens: float, seqs: float, prompt_tokens: float,
            chunk: int | None) -> Terms:
    """Prompts prefilled in steps of at most `chunk` tokens (the engine's token budget per step)."""
    if tokens <= 0:
        return ZERO
    steps = max(1, math.ceil(tokens / chunk)) if chunk else 1
    one = step(m, cal, tp, 0, prompt_tokens / 2, tokens / steps)
    return Terms(one.weights_s, one.kv_s, one.compute_s, cal.step_overhead_s + cal.per_seq_s * seqs / steps,
                 one.allreduce_s).scaled(steps)


def attributed_sum(items: list[tuple[Terms, float]]) -> dict[str, float]:
    """Seconds of each part over many steps (each step's binding side only)."""
    out: dict[str, float] = {}
    for terms, count in items:
        for k, v in terms.attributed().items():
            out[k] = out.get(k, 0.0) + v * count
    return out


@dataclass(frozen=True)
class OfflinePrediction:
    generate_s: float
    parts: dict[str, float]           # seconds by term over the whole batch, prefill included
    batch: float                      # sequences per step of the first wave
    waves: int
    step: Terms                       # one decode step of the first wave


def offline(m: ModelShape, cal: Calibration, tp: int, prompts: int, prompt_tokens: float, output_tokens: float,
            limits: Limits) -> OfflinePrediction:
    """One replica's batch: its prompts prefilled, then decoded in waves of the engine's batch."""
    batch = limits.batch(prompts, prompt_tokens + output_tokens)
    full, rest = (divmod(prompts, int(batch)) if batch >= 1 else (0, 0))
    waves = [int(batch)] * full + ([rest] if rest else [])
    decode_steps = max(0.0, output_tokens - 1)        # the prefill's step gives each answer its first token
    context = prompt_tokens + output_tokens / 2
    items = [(step(m, cal, tp, b, context), decode_steps) for b in waves]
    items.append((prefill(m, cal, tp, prompts * prompt_tokens, prompts, prompt_tokens, limits.max_batched_tokens), 1))
    parts = attributed_sum(items)
    if cal.batch_fixed_s:
        parts["run"] = cal.batch_fixed_s
    return OfflinePrediction(sum(parts.values()), parts, batch, len(waves), items[0][0] if waves else ZERO)


@dataclass(frozen=True)
class LevelPrediction:
    level: str                        # "c=64", "rate=8/s"
    tpot_s: float
    ttft_s: float                     # inf: the level's arrivals outrun the servers
    batch: float                      # sequences per server per step
    step: Terms
    saturated: bool = False


def serve_level(m: ModelShape, cal: Calibration, tp: int, servers: int, kind: str, value: float,
                prompt_tokens: float, output_tokens: float, limits: Limits) -> LevelPrediction:
    """One load level, split evenly over the servers (the client sends to the one with fewest in flight)."""
    context = prompt_tokens + output_tokens / 2
    steps_per_request = max(1.0, output_tokens - 1)

    def at(batch: float) -> Terms:
        # in steady state every sequence's prompt is prefilled once while the batch decodes its answers;
        # the server (its front end, on a CPU device on the same cores) adds its own work to each step
        t = step(m, cal, tp, batch, context, batch * prompt_tokens / steps_per_request)
        return dataclasses.replace(t, overhead_s=t.overhead_s + cal.server_step_s)
    if kind == "concurrency":
        wanted = value / servers
        batch = limits.batch(wanted, prompt_tokens + output_tokens)
        terms = at(batch)
        # a closed-loop level starts with all its requests at once: a request waits for half the burst's prefill
        burst = prefill(m, cal, tp, (batch + 1) / 2 * prompt_tokens, (batch + 1) / 2, prompt_tokens,
                        limits.max_batched_tokens).total_s
        queued = max(0.0, wanted - batch) / max(wanted, 1e-9)   # beyond the engine's batch, a request waits a whole one
        ttft = cal.ttft_fixed_s + burst + queued * steps_per_request * terms.total_s
        return LevelPrediction(f"c={value:g}", terms.total_s, ttft, batch, terms)
    rate = value / servers
    most = limits.batch(math.inf, prompt_tokens + output_tokens)
    own = prefill(m, cal, tp, prompt_tokens, 1, prompt_tokens, limits.max_batched_tokens).total_s
    batch, saturated = 0.0, False
    for _ in range(200):           # Little's law: in flight = rate x time in the system, to its fixed point
        terms = at(batch)
        ttft = cal.ttft_fixed_s + terms.total_s / 2 + own
        nxt = rate * (ttft + steps_per_request * terms.total_s)
        if nxt > most:
            saturated = True
            break
        if abs(nxt - batch) <= 1e-6 * max(1.0, batch):
            batch = nxt
            break
        batch = 0.5 * (batch + nxt)
    else:
        saturated = True
    if saturated:
        terms = at(most)
        return LevelPrediction(f"rate={value:g}/s", terms.total_s, math.inf, most, terms, True)
    terms = at(batch)
    return LevelPrediction(f"rate={value:g}/s", terms.total_s, cal.ttft_fixed_s + terms.total_s / 2 + own, batch, terms)


def capacity(m: ModelShape, cal: Calibration, tp: int, servers: int, prompt_tokens: float, output_tokens: float,
             limits: Limits, slo_ttft_s: float | None, slo_tpot_s: float | None) -> float:
    """The highest request rate (all servers) whose predicted TTFT and TPOT meet the SLOs (0: none)."""
    def holds(rate: float) -> bool:
        # the model predicts medians; SLOs hold a percentile: the single device's measured tail ratio
        lp = serve_level(m, cal, tp, servers, "rate", rate, prompt_tokens, output_tokens, limits)
        return not lp.saturated and (slo_tpot_s is None or cal.tail_tpot * lp.tpot_s <= slo_tpot_s) and \
            (slo_ttft_s is None or cal.tail_ttft * lp.ttft_s <= slo_ttft_s)
    lo, hi = 0.0, 1.0
    while holds(hi) and hi < 1e7:
        lo, hi = hi, hi * 2
    if lo == 0.0:
        hi, lo = 1.0, 0.0
        while not holds(hi) and hi > 1e-6:
            hi /= 2
        if hi <= 1e-6:
            return 0.0
        lo, hi = hi, hi * 2
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if holds(mid) else (lo, mid)
    return lo


def roofline_s(m: ModelShape, cal: Calibration, tp: int, batch: float, context: float) -> float:
    """The floor of a step: weights and KV at the bandwidth, or compute at the datasheet's peak."""
    memory = (m.weights_read(tp) + batch * context * m.kv_bytes_per_token(tp)) / cal.bandwidth_bytes_per_s
    compute = batch * m.flops_per_token(context) / tp / cal.peak_flops_per_s if cal.peak_flops_per_s else 0.0
    return max(memory, compute)
