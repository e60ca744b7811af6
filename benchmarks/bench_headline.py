"""The benchmarks' headline (issue 25, SPEC §16): what an operator pays for the proxy
itself. On a deployment the client and the server run on other hosts, so the proxy's
own CPU per GB, per keep-alive request and per connection, and the latency it adds over
the direct connection, are the figures that transfer; loopback Gb/s is not. Each row:
the best peer, fastproxy's best variant, their ratio, the paired rounds it won, and the
issue's target, met or missed. Shared by readme_table.py and report.py."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bench_summary import METRICS, OURS, Case, Spread, round_wins
from targets import NOT_RUNNABLE


@dataclass(frozen=True)
class Headline:
    figure: str
    case: str
    metric: str
    bound: float  # fastproxy's median over the best peer's that meets the target
    target: str


CPU_TARGET = "≤ 0.8× best peer"
HEADLINES = (
    Headline(
        "proxy CPU ms per GB, bulk 1 stream", "bulk-1stream", "proxy_cpu_ms_per_gb", 0.8, CPU_TARGET
    ),
    Headline(
        "proxy CPU µs per keep-alive request",
        "http-keepalive",
        "proxy_cpu_us_per_req",
        0.8,
        CPU_TARGET,
    ),
    Headline(
        "proxy CPU µs per connection (churn: one request each)",
        "http-churn",
        "proxy_cpu_us_per_req",
        0.8,
        CPU_TARGET,
    ),
    Headline(
        "added p50 µs over direct, 1 connection",
        "http-latency",
        "added_p50_us",
        1.0,
        "≤ best peer's",
    ),
    Headline(
        "added p50 µs over direct, open loop at 25 % of own max",
        "openloop-25%",
        "added_p50_us",
        1.0,
        "≤ best peer's",
    ),
    Headline("keep-alive req/s", "http-keepalive", "rate", 1.1, "≥ 1.1× best peer"),
    Headline(
        "churn req/s (a new connection per request)", "http-churn", "rate", 1.1, "≥ 1.1× best peer"
    ),
)
HEAD = ["figure", "best peer", "fastproxy (best variant)", "ratio", "paired rounds won"]
HEAD += ["target", "verdict"]
MISSING = "not measured in this run"


def best_variant(case: Case, metric: str) -> str | None:
    """fastproxy's contender with the best median on `metric`, among those an operator
    may run (targets.NOT_RUNNABLE: the sockmap relay, whose work the kernel does
    outside the process, is left out)."""
    mine = [
        n
        for n, values in case.figures.items()
        if n.startswith(OURS) and n not in NOT_RUNNABLE and metric in values
    ]
    if not mine:
        return None
    pick = max if METRICS[metric][1] else min
    return pick(mine, key=lambda n: case.figures[n][metric].median)


def judge(mine: Spread, theirs: Spread, bound: float, higher: bool) -> str:
    """met or missed by the medians; tie where fastproxy's spread overlaps the target's
    (the best peer's spread times `bound`): the rounds cannot tell."""
    target = Spread(theirs.median * bound, theirs.low * bound, theirs.high * bound)
    if mine.overlaps(target):
        return "tie (within the spreads)"
    meets = mine.median >= target.median if higher else mine.median <= target.median
    return "met" if meets else "missed"


def times(mine: Spread, theirs: Spread) -> str:
    """fastproxy's median over the peer's; none of a 0 or a negative (added µs)."""
    if theirs.median <= 0 or mine.median < 0:
        return "-"
    return f"{mine.median / theirs.median:.2f}×"


def row(case: Case | None, headline: Headline) -> list[str]:
    metric = headline.metric
    best = case.best_peer(metric) if case else None
    ours = best_variant(case, metric) if case else None
    if case is None or best is None or ours is None:
        return [headline.figure, "-", "-", "-", "-", headline.target, MISSING]
    digits = METRICS[metric][2]
    theirs, mine = case.figures[best][metric], case.figures[ours][metric]
    wins, count, _ = round_wins(case, ours, metric, best)
    return [
        headline.figure,
        f"{best} {theirs.show(digits)}",
        f"{ours} {mine.show(digits)}",
        times(mine, theirs),
        f"{wins} of {count}" if count else "-",
        headline.target,
        judge(mine, theirs, headline.bound, METRICS[metric][1]),
    ]


def cores(data: dict) -> str:
    found = re.search(r"(\d+) CPUs", data.get("run", {}).get("machine", ""))
    return f"one {found.group(1)}-core machine" if found else "one machine"


def headline_lines(data: dict, cases: list[Case]) -> list[str]:
    """The headline table, with what it says and what loopback Gb/s does not."""
    by = {c.name: c for c in cases}
    lines = [
        "The proxy's own CPU (utime+stime of all its processes) per GB, per keep-alive"
        " request and per connection, and the latency it adds over the direct connection"
        " in the same round: with the client and the server on other hosts, this is what a"
        " deployment pays. Against the best peer on each; *ratio*: fastproxy's median over"
        " the peer's; *target*: issue 25's (CPU per connection held to the per-request"
        " one); *tie*: fastproxy's [min-max] spread overlaps the target's.",
        "",
        "| " + " | ".join(HEAD) + " |",
        "|" + "---|" * len(HEAD),
    ]
    lines += ["| " + " | ".join(row(by.get(h.case), h)) + " |" for h in HEADLINES]
    return lines + [
        "",
        f"Loopback Gbit/s is bounded by the CPUs the client, the proxy and the server share"
        f" on {cores(data)}: it says how they split those cores, not what a proxy carries;"
        " the per-GB and per-request costs above are what transfer to a deployment.",
    ]
