"""The report's pictures. report.png: per run, a stacked bar of start-up and generate seconds
(what a user waits for), with strict and flexible accuracy on a second axis, so a layout that is
faster but answers differently stands out at a glance. report-serving.png: the serving runs'
throughput-latency trade-off.

    python -m evaluator.report results/ --compare --plot results/report.png   # + report-serving.png for serving runs
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Bar:
    """One run as the picture shows it."""
    label: str
    startup_s: float
    generate_s: float
    strict_accuracy: float
    flexible_accuracy: float


def plot_runs(bars: list[Bar], path: str | Path, title: str = "Time and accuracy per layout") -> Path:
    """Write the PNG to path (parent folders created) and return it."""
    import matplotlib
    matplotlib.use("Agg")   # no display here, and report runs on headless nodes
    import matplotlib.pyplot as plt

    if not bars:
        raise ValueError("nothing to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = list(range(len(bars)))
    width = max(6.0, 1.1 * len(bars) + 2.5)
    fig, ax = plt.subplots(figsize=(width, 4.8), dpi=120)
    startup = [b.startup_s for b in bars]
    generate = [b.generate_s for b in bars]
    ax.bar(x, startup, width=0.6, color="#9db4d6", label="start-up s")
    ax.bar(x, generate, width=0.6, bottom=startup, color="#2f5d9e", label="generate s")
    for i, b in enumerate(bars):
        # the split in numbers too: a generate slice of 0.1 s under 50 s of start-up has no visible height
        gen = f"{b.generate_s:.1f}" if b.generate_s >= 1 else f"{b.generate_s:.2g}"
        ax.annotate(f"{b.startup_s:.1f} + {gen} s", (i, b.startup_s + b.generate_s),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_ylabel("seconds (start-up + generate)")
    ax.set_xlabel("layout (dp×tp)")
    ax.set_xticks(x)
    crowded = len(bars) > 4
    ax.set_xticklabels([b.label for b in bars], rotation=20 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylim(0, max(s + g for s, g in zip(startup, generate)) * 1.15 or 1.0)

    acc = ax.twinx()
    # side by side, so equal strict and flexible scores do not hide one another
    acc.plot([i - 0.12 for i in x], [b.strict_accuracy for b in bars], "o", color="#d1495b", markersize=8,
             label="strict accuracy")
    acc.plot([i + 0.12 for i in x], [b.flexible_accuracy for b in bars], "D", color="#edae49", markersize=7,
             markerfacecolor="none", markeredgewidth=2, label="flexible accuracy")
    acc.set_ylim(-0.03, 1.05)   # a score of 0 stays visible above the axis
    acc.set_ylabel("accuracy")

    # one legend for both axes, outside the bars so it never hides one
    handles = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper center",
              bbox_to_anchor=(0.5, -0.25 if crowded else -0.14), ncol=4, fontsize=8, frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_tradeoff(curves, path: str | Path, title: str = "Throughput against latency, per layout") -> Path:
    """Serving runs: output tokens/s per GPU (what the hardware yields) against tokens/s per user
    (how fast one answer streams), one line per layout through its load levels. Up and to the
    right is better; where lines cross, the better layout changes with the load."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("nothing to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    for c in curves:
        ax.plot(c.per_user, c.per_gpu, "o-", label=c.label)
        for x, y, level in zip(c.per_user, c.per_gpu, c.levels):
            ax.annotate(level, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("tokens/s per user (mean 1 / TPOT)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def runs_png(report, path: str | Path) -> Path:
    """report.png from the report record's figures: time and accuracy per layout."""
    nan = float("nan")           # not measured (serving traffic other than GSM8K): no point drawn
    acc = {a.path: a for a in report.figures.accuracy}
    bars = []
    for t in report.figures.time:
        a = acc[t.path]
        bars.append(Bar(label=t.label.replace(" [", "\n["), startup_s=t.startup_s, generate_s=t.generate_s,
                        strict_accuracy=nan if a.strict is None else a.strict,
                        flexible_accuracy=nan if a.flexible is None else a.flexible))
    if len({r.engine for r in report.runs}) == 1:   # the engine in every label is noise when there is one
        bars = [Bar(b.label.split(" ", 1)[1], b.startup_s, b.generate_s, b.strict_accuracy, b.flexible_accuracy)
                for b in bars]
    return plot_runs(bars, path)


def tradeoff_png(report, path: str | Path) -> Path | None:
    """report-serving.png from the record's tradeoff curves; None without serving runs."""
    from evaluator.report.serving import Curve
    curves = [Curve(c.label, [p.tokens_per_s_per_user or 0.0 for p in c.points],
                    [p.output_tokens_per_s_per_gpu for p in c.points], [p.level for p in c.points])
              for c in report.figures.tradeoff]
    return plot_tradeoff(curves, path) if curves else None
