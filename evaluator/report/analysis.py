"""Answers the run table alone cannot give, as pure functions over records already on disk:
is an accuracy difference between two layouts real (McNemar's exact test), do two layouts say the
same thing (identical outputs, same extracted answer, correctness flips), where the time goes
(straggler gap) and from which prompt count a layout's extra start-up pays for itself
(break-even, one-sentence verdict), and what a layout costs (GPU-hours, cost per million tokens).
Nothing here reads files or prints; the rest of evaluator/report does.

    python -m evaluator.report results/ --compare --show-flips
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from evaluator.records import ReplicaTiming, Sample


class AnalysisError(ValueError):
    """Two runs cannot be compared (e.g. they did not answer the same prompts)."""


# --- equivalence --------------------------------------------------------------------------------
def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs.

    Under "both layouts are equally accurate" each discordant prompt is a fair coin, so the
    smaller count follows Binomial(b + c, 1/2); the p-value doubles its tail (capped at 1).
    Concordant prompts carry no information about the difference, which is why 0.7839 vs 0.7817
    over 1319 prompts can be pure noise. Exact integer sums (math.comb), so no scipy and no
    normal approximation that misbehaves on a handful of flips."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0 (got b={b}, c={c})")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    # int / int is exact-then-rounded in Python, so n in the thousands does not overflow
    return min(1.0, 2 * tail / 2 ** n)


@dataclass(frozen=True)
class AccuracyTest:
    """One score (strict or flexible) of a layout against its baseline on the same prompts."""
    metric: str                  # "strict" or "flexible"
    baseline_accuracy: float
    accuracy: float
    lost: int                    # baseline right, this layout wrong (McNemar's b)
    gained: int                  # baseline wrong, this layout right (McNemar's c)
    p_value: float

    @property
    def difference(self) -> float:
        return self.accuracy - self.baseline_accuracy


@dataclass(frozen=True)
class Flip:
    """A prompt whose correctness differs between baseline and layout under at least one score."""
    index: int
    baseline: Sample
    other: Sample

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(m for m in ("strict", "flexible")
                     if getattr(self.baseline, f"{m}_correct") != getattr(self.other, f"{m}_correct"))


@dataclass(frozen=True)
class Equivalence:
    """How far a layout's answers match its baseline's, prompt by prompt."""
    prompts: int
    identical_outputs: int       # same first response text, character for character
    same_answer: int             # same flexible prediction (both without a number counts as the same)
    strict: AccuracyTest
    flexible: AccuracyTest
    flips: tuple[Flip, ...]

    @property
    def identical_rate(self) -> float:
        return self.identical_outputs / self.prompts if self.prompts else 1.0

    @property
    def agreement_rate(self) -> float:
        return self.same_answer / self.prompts if self.prompts else 1.0


def _accuracy_test(metric: str, pairs: list[tuple[Sample, Sample]]) -> AccuracyTest:
    key = f"{metric}_correct"
    lost = sum(1 for a, b in pairs if getattr(a, key) and not getattr(b, key))
    gained = sum(1 for a, b in pairs if not getattr(a, key) and getattr(b, key))
    n = len(pairs)
    return AccuracyTest(metric=metric,
                        baseline_accuracy=sum(getattr(a, key) for a, _ in pairs) / n if n else 0.0,
                        accuracy=sum(getattr(b, key) for _, b in pairs) / n if n else 0.0,
                        lost=lost, gained=gained, p_value=mcnemar_exact_p(lost, gained))


def compare_samples(baseline: list[Sample], other: list[Sample], common: bool = False) -> Equivalence:
    """Pair the two runs' samples by global index (never by position: shards finish in any order)
    and measure how far they agree. Both must hold exactly the same indices, or (common=True: a
    serving run, whose levels each answered their own fresh prompts) the prompts both answered."""
    base = {s.index: s for s in baseline}
    mine = {s.index: s for s in other}
    if len(base) != len(baseline) or len(mine) != len(other):
        raise AnalysisError("a run holds the same index twice")
    if common:
        shared = base.keys() & mine.keys()
        if not shared:
            raise AnalysisError("the runs answered no prompt in common")
        base, mine = {i: base[i] for i in shared}, {i: mine[i] for i in shared}
    if base.keys() != mine.keys():
        only_base, only_other = sorted(base.keys() - mine.keys()), sorted(mine.keys() - base.keys())
        raise AnalysisError(f"the runs answered different prompts (only in baseline: {only_base[:5]}, "
                            f"only in the other: {only_other[:5]})")
    pairs = [(base[i], mine[i]) for i in sorted(base)]
    flips = tuple(Flip(a.index, a, b) for a, b in pairs
                  if a.strict_correct != b.strict_correct or a.flexible_correct != b.flexible_correct)
    return Equivalence(prompts=len(pairs),
                       identical_outputs=sum(1 for a, b in pairs if a.response == b.response),
                       same_answer=sum(1 for a, b in pairs if a.flexible_pred == b.flexible_pred),
                       strict=_accuracy_test("strict", pairs), flexible=_accuracy_test("flexible", pairs),
                       flips=flips)


# --- time ---------------------------------------------------------------------------------------
def straggler_gap(replicas: tuple[ReplicaTiming, ...] | list[ReplicaTiming]) -> float:
    """(slowest - fastest generate time) / slowest, over replicas that generated anything: the
    share of the slowest replica's generate time that the others spent idle. 0 for one replica."""
    times = [r.generate_s for r in replicas if r.prompts > 0]
    if not times or max(times) <= 0:
        return 0.0
    return (max(times) - min(times)) / max(times)


@dataclass(frozen=True)
class Cost:
    """A layout's measured time model: time(n) = startup_s + n * per_prompt_s.

    Replicas start concurrently and the run waits for the slowest, so startup_s and generate_s
    are the slowest replica's (as summary.json records them)."""
    label: str
    startup_s: float
    per_prompt_s: float

    def time_s(self, prompts: float) -> float:
        return self.startup_s + prompts * self.per_prompt_s


def cost(label: str, startup_s: float, generate_s: float, prompts: int) -> Cost:
    """Per-prompt generate time measured over the whole run's batch; a run of more prompts batches
    differently, so the model is a straight-line estimate around the measured count."""
    if prompts < 0 or startup_s < 0 or generate_s < 0:
        raise ValueError(f"{label}: times and prompt count must be >= 0")
    return Cost(label=label, startup_s=startup_s, per_prompt_s=generate_s / prompts if prompts else 0.0)


def break_even_prompts(layout: Cost, baseline: Cost) -> float | None:
    """The prompt count at which the layout's extra start-up is repaid by its faster generation:
    from there on it takes less total time than the baseline.

    0.0 when the layout is never slower (no extra start-up, generation at least as fast);
    None when it never catches up (generation not faster, and start-up not shorter; or generation
    slower: then any head start is lost as the count grows, which the verdict reports)."""
    extra_startup_s = layout.startup_s - baseline.startup_s
    saved_per_prompt_s = baseline.per_prompt_s - layout.per_prompt_s
    if saved_per_prompt_s < 0:
        return None
    if extra_startup_s <= 0:
        return 0.0
    if saved_per_prompt_s == 0:
        return None
    return extra_startup_s / saved_per_prompt_s


def first_count_faster(layout: Cost, other: Cost) -> int | None:
    """The smallest whole prompt count (>= 1) from which `layout` is strictly faster than `other`
    and stays so; None when that never happens."""
    if layout.per_prompt_s >= other.per_prompt_s:
        # not faster per prompt: any lead is lost as the count grows, unless the slopes are
        # equal and it starts sooner, when it leads from the first prompt on
        if layout.per_prompt_s == other.per_prompt_s and layout.startup_s < other.startup_s:
            return 1
        return None
    crossing = (layout.startup_s - other.startup_s) / (other.per_prompt_s - layout.per_prompt_s)
    return max(1, math.floor(crossing) + 1)


def faster_until(layout: Cost, baseline: Cost) -> int | None:
    """The largest whole prompt count at which a layout that starts sooner but generates slower
    still beats the baseline; None when it is not such a layout or never leads at a whole count."""
    if layout.startup_s >= baseline.startup_s or layout.per_prompt_s <= baseline.per_prompt_s:
        return None
    crossing = (baseline.startup_s - layout.startup_s) / (layout.per_prompt_s - baseline.per_prompt_s)
    last = math.ceil(crossing) - 1
    return last if last >= 1 else None


def fastest_ranges(costs: list[Cost]) -> list[tuple[Cost, int, int | None]]:
    """The lower envelope of the straight lines, from 1 prompt up: (layout, from, to) with to=None
    for the last range. A tie goes to the layout with the smaller per-prompt time (it wins later)."""
    if not costs:
        raise AnalysisError("no layout to compare")
    n, out = 1, []
    current = min(costs, key=lambda c: (c.time_s(1), c.per_prompt_s))
    while True:
        later = [(first_count_faster(c, current), c) for c in costs
                 if c is not current and c.per_prompt_s < current.per_prompt_s]
        later = [(k, c) for k, c in later if k is not None]
        if not later:
            out.append((current, n, None))
            return out
        k, nxt = min(later, key=lambda x: (x[0], x[1].per_prompt_s))
        k = max(k, n + 1)
        out.append((current, n, k - 1))
        n, current = k, nxt


@dataclass(frozen=True)
class Verdict:
    """Which layout is fastest at the measured prompt count, and, by the straight-line model
    time(n) = start-up + n x s/prompt of this one batch, which is fastest at every other count."""
    prompts: int
    fastest: Cost
    ranges: tuple[tuple[Cost, int, int | None], ...]
    alone: bool = False          # the only layout measured on this workload
    scope: str = ""              # what was compared ("vllm, cpu, warm starts, ...")

    @property
    def overtaker(self) -> Cost | None:
        """The first layout to become faster than the fastest one as the count grows."""
        after = [c for c, lo, _ in self.ranges if lo > self.prompts]
        return after[0] if after else None

    @property
    def overtakes_from(self) -> int | None:
        after = [lo for _, lo, _ in self.ranges if lo > self.prompts]
        return after[0] if after else None

    @property
    def sentence(self) -> str:
        scope = f" ({self.scope})" if self.scope else ""
        if self.alone:
            return (f"For {self.prompts} prompts{scope} only {self.fastest.label} was measured "
                    f"({self.fastest.time_s(self.prompts):.1f} s); run other layouts to compare.")
        head = (f"Measured at {self.prompts} prompts{scope}: {self.fastest.label} is fastest "
                f"({self.fastest.time_s(self.prompts):.1f} s: start-up {self.fastest.startup_s:.1f} s "
                f"+ {self.prompts} x {self.fastest.per_prompt_s:.3f} s/prompt).")
        if len(self.ranges) == 1:
            tail = f"{self.fastest.label} at every prompt count"
        else:
            parts = []
            for c, lo, hi in self.ranges:
                parts.append(f"{c.label} " + (f"from {lo} on" if hi is None else f"up to {hi}" if lo == 1
                                              else f"at {lo}" if lo == hi else f"from {lo} to {hi}"))
            tail = ", ".join(parts)
        return (f"{head} Estimated from this one batch size (time = start-up + n x s/prompt; a batch of another "
                f"size runs more or fewer prompts at once and takes another time per prompt, so read counts far "
                f"from {self.prompts} as estimates): {tail}.")


def verdict(costs: list[Cost], prompts: int, scope: str = "") -> Verdict:
    """The fastest layout at this prompt count (ties: the lower start-up, which wins at smaller
    counts) and the fastest at every count by the straight-line estimate."""
    if not costs:
        raise AnalysisError("no layout to compare")
    fastest = min(costs, key=lambda c: (c.time_s(prompts), c.startup_s))
    return Verdict(prompts=prompts, fastest=fastest, ranges=tuple(fastest_ranges(costs)), alone=len(costs) == 1,
                   scope=scope)


# --- cost ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuCost:
    """What a run cost in GPU time: every second its devices were held, start-up included."""
    gpu_hours: float
    cost: float | None                       # gpu_hours x price, when a price is given
    cost_per_million_tokens: float | None    # per million output tokens


def gpu_cost(gpus: int, seconds: float, output_tokens: int, price_per_gpu_hour: float | None) -> GpuCost:
    """gpus x seconds in hours; the price per GPU-hour turns it into money, and over the output
    tokens into a price per million tokens."""
    if gpus < 1 or seconds < 0 or output_tokens < 0:
        raise ValueError("gpus >= 1, seconds and token count >= 0")
    hours = gpus * seconds / 3600
    cost = hours * price_per_gpu_hour if price_per_gpu_hour is not None else None
    per_million = cost / output_tokens * 1e6 if cost is not None and output_tokens else None
    return GpuCost(hours, cost, per_million)


def paid_s(attempts, wall_s: float) -> float:
    """Every attempt's wall time (a killed one's until its last sign of life): the devices were
    held, and paid for, through Ray's start, the engines' start, scoring, shutdown and the pauses
    between serving levels, in every attempt, not only the last one's engine time."""
    return sum(a.wall_s for a in attempts) if attempts else wall_s


def cost_per_million_at(gpus: int, output_tokens_per_s: float, price_per_gpu_hour: float | None) -> float | None:
    """The price of a million output tokens while the layout runs at this throughput."""
    if price_per_gpu_hour is None or not output_tokens_per_s:
        return None
    return gpus * price_per_gpu_hour / 3600 / output_tokens_per_s * 1e6
