"""Issue 12's targets, judged from a run's figures (a section of RESULTS.md).

Each target names a case, a metric and a rule; the row shows fastproxy's best mode
(the best median among its contenders that an operator may run: not fastproxy-sockmap,
refused by default because the kernel may send a segment twice), what it is compared
with, and met/missed. Medians decide; where spreads overlap the comparison is also
reported as a tie."""

from __future__ import annotations

import math

from bench_summary import METRICS, OURS, Case, Spread

NOT_RUNNABLE = ("fastproxy-sockmap",)  # measured for what the kernel path costs, only


def _ours(case: Case, metric: str) -> tuple[str, Spread] | None:
    """fastproxy's best runnable contender on `metric` in `case`."""
    mine = [
        (n, v[metric])
        for n, v in case.figures.items()
        if n.startswith(OURS) and n not in NOT_RUNNABLE and metric in v
    ]
    if not mine:
        return None
    higher = METRICS[metric][1]
    return (max if higher else min)(mine, key=lambda item: item[1].median)


def _show(metric: str, spread: Spread) -> str:
    return spread.show(METRICS[metric][2])


def _vs_best_peer(case: Case, metric: str, factor: float) -> tuple[str, str, bool] | None:
    """Ours against the best peer: at least `factor` times better, outside the
    spreads (a tie is not "below every peer's"). Returns (ours, theirs, met)."""
    best, mine = case.best_peer(metric), _ours(case, metric)
    if best is None or mine is None:
        return None
    theirs = case.figures[best][metric]
    higher = METRICS[metric][1]
    advantage = (
        _ratio(mine[1].median, theirs.median) if higher else _ratio(theirs.median, mine[1].median)
    )
    tie = " (spreads overlap: tie)" if mine[1].overlaps(theirs) else ""
    return (
        f"{mine[0]} {_show(metric, mine[1])}",
        f"{best} {_show(metric, theirs)}: {_times(advantage)}{tie}",
        advantage is not None and advantage >= factor and not tie,
    )


def _ratio(a: float, b: float) -> float | None:
    """a / b; infinite when only b is 0, None when both are (a stalled round's rate of
    0 is a figure too): never a division by zero, never a made-up denominator."""
    if b == 0:
        return math.inf if a > 0 else None
    return a / b


def _times(ratio: float | None) -> str:
    return "no ratio (both 0)" if ratio is None else f"{ratio:.2f}×"


def rows(cases: list[Case]) -> list[str]:
    by = {c.name: c for c in cases}
    head = ["figure", "target", "fastproxy (best mode)", "compared with", "met"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def add(figure: str, target: str, ours: str, other: str, met: bool) -> None:
        out.append(f"| {figure} | {target} | {ours} | {other} | {'yes' if met else 'no'} |")

    bulk = by.get("bulk-1stream")
    if bulk and "direct" in bulk.figures:
        mine = _ours(bulk, "gbit_per_s")
        judged = _vs_best_peer(bulk, "gbit_per_s", 1.2)
        if mine and judged:
            direct = bulk.figures["direct"]["gbit_per_s"].median
            share = _ratio(mine[1].median, direct)
            add(
                "1-stream bulk Gb/s",
                "≥ 0.85× direct",
                judged[0],
                f"direct {direct:,.2f}: {_times(share)}",
                share is not None and share >= 0.85,
            )
            add("1-stream bulk Gb/s", "≥ 1.2× best peer", *judged)
    for name in ("bulk-1stream", "bulk-4stream"):
        case = by.get(name)
        for metric in ("shared_cpu_ms_per_gb", "all_cpu_ms_per_gb"):
            judged = case and _vs_best_peer(case, metric, 1.0)
            if judged:
                add(f"{METRICS[metric][0]}, {name}", "below every peer's", *judged)
    for name, figure in (
        ("http-churn", "new connections/s"),
        ("http-keepalive", "keep-alive req/s"),
    ):
        case = by.get(name)
        judged = case and _vs_best_peer(case, "rate", 1.2)
        if judged:
            add(figure, "≥ 1.2× best peer", *judged)
    case = by.get("openloop-75%")
    judged = case and _vs_best_peer(case, "p99_us", 1.0)
    if judged:
        add("p99 µs at 75 % of its own maximum, open loop", "≤ best peer's", *judged)
    many, few = by.get("http-concurrent"), by.get("http-concurrent-100")
    if many and few:
        for metric in ("rate", "p99_us"):
            mine = _ours(many, metric)
            if mine is None or metric not in few.figures.get(mine[0], {}):
                continue
            change = _ratio(mine[1].median, few.figures[mine[0]][metric].median)
            within = change is not None and (change >= 0.9 if metric == "rate" else change <= 1.1)
            add(
                f"{METRICS[metric][0]}, {many.info.get('connections')} vs"
                f" {few.info.get('connections')} connections",
                "within 10 %",
                f"{mine[0]} {_show(metric, mine[1])}",
                f"{_show(metric, few.figures[mine[0]][metric])} with"
                f" {few.info.get('connections')}: {_times(change)}",
                within,
            )
    start = by.get("ports-startup")
    if start and "startup_ms" in start.figures.get("fastproxy-bpf", {}):
        mine_ms = start.figures["fastproxy-bpf"]["startup_ms"]
        peer = start.figures.get("haproxy", {}).get("startup_ms")
        add(
            "start-up ms, 10,000 ports, bpf (warm cache)",
            "< 300 ms",
            f"fastproxy-bpf {_show('startup_ms', mine_ms)}",
            f"haproxy {_show('startup_ms', peer)}" if peer else "-",
            mine_ms.median < 300,
        )
    return out
