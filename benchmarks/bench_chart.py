"""The at-a-glance view: for each figure, each proxy's median relative to HAProxy with
splice, turned so that above 1 is better (faster, or less CPU, latency or memory). As a
table for RESULTS.md and as grouped bars in results/summary.png."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from bench_contenders import HAPROXY, PROXIES
from bench_report import Column, Figure, Results


def summary_columns(results: Results, figures: dict[str, Figure]) -> list[tuple[str, Column]]:
    """(label, column) of every figure that has a HAProxy splice median to compare to."""
    columns: list[tuple[str, Column]] = []
    for streams in (1, 4):
        gbits = Column(f"Gbit/s, {streams} stream(s)", 2)
        cpu = Column(f"CPU/GB, {streams} stream(s)", 0, lower_is_better=True)
        for (name, n), row in results.rows.items():
            if n != streams:
                continue
            for t in row.transfers:
                gbits.add(name, t.gbit_per_s)
                if t.cpu_ms_per_gb is not None:
                    cpu.add(name, t.cpu_ms_per_gb)
        label = "1 stream" if streams == 1 else f"{streams} streams"
        columns += [(f"throughput\n{label}", gbits), (f"CPU per GB\n{label}", cpu)]
    wanted = [
        ("connect", "conn/s", "new\nconnections/s"),
        ("keepalive", "req/s", "keep-alive\nrequests/s"),
        ("latency", "p50 µs", "latency p50\n(1 at a time)"),
        ("latency", "p99 µs", "latency p99\n(1 at a time)"),
        ("idle", "total B/conn", "memory per\nidle connection"),
    ]
    for key, header, label in wanted:
        if key in figures:
            columns.append((label, figures[key].column(header)))
    return [(label, c) for label, c in columns if c.median(HAPROXY)]


def summary_table(columns: Sequence[tuple[str, Column]]) -> str:
    names = [n for n in PROXIES if any(c.samples.get(n) for _, c in columns)]
    lines = ["| figure | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for label, column in columns:
        cells = []
        for name in names:
            adv = column.advantage(name, HAPROXY)
            cells.append("-" if adv is None else f"{adv:.2f}")
        lines.append(f"| {label.replace(chr(10), ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


COLOURS = {
    "haproxy-splice": "#7f7f7f",
    "haproxy-nosplice": "#bdbdbd",
    "asyncio": "#f4a259",
    "uvloop": "#e07a1f",
    "fastproxy-copy": "#9ecae1",
    "fastproxy-splice": "#2171b5",
    "fastproxy-splice-bpf": "#08306b",
}


def draw(columns: Sequence[tuple[str, Column]], path: Path, subtitle: str) -> bool:
    """Draw the chart; False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in PROXIES if any(c.samples.get(n) for _, c in columns)]
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(14, 6.5), dpi=110)
    for i, name in enumerate(names):
        xs, ys = [], []
        for x, (_, column) in enumerate(columns):
            adv = column.advantage(name, HAPROXY)
            if adv:
                xs.append(x - 0.4 + width * (i + 0.5))
                ys.append(adv)
        # Bars grow from the 1× line: up where better than HAProxy splice, down where worse.
        heights = [y - 1 for y in ys]
        label = f"{name} (the 1× line)" if name == HAPROXY else name
        bars = ax.bar(xs, heights, width, bottom=1, label=label, color=COLOURS.get(name))
        if name.startswith("fastproxy-splice"):
            for bar, y in zip(bars, ys):
                ax.annotate(
                    f"{y:.2f}",
                    (bar.get_x() + bar.get_width() / 2, y),
                    ha="center",
                    va="bottom" if y >= 1 else "top",
                    fontsize=7,
                    rotation=90,
                    xytext=(0, 2 if y >= 1 else -2),
                    textcoords="offset points",
                )
    ax.set_yscale("log", base=2)
    values = [c.advantage(n, HAPROXY) or 1.0 for _, c in columns for n in names if c.samples.get(n)]
    low = 2 ** math.floor(math.log2(min(values + [0.5])))
    high = 2 ** math.ceil(math.log2(max(values + [2.0])) + 0.3)
    ax.set_ylim(low, high)
    ticks = [2.0**k for k in range(int(math.log2(low)), int(math.log2(high)) + 1)]
    ax.set_yticks(ticks, [f"{t:g}×" for t in ticks])
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xticks(range(len(columns)), [label for label, _ in columns], fontsize=9)
    ax.set_ylabel("relative to HAProxy splice (higher is better)")
    ax.set_title(f"fastproxy against the others, per figure\n{subtitle}", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncol=4, fontsize=9, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
