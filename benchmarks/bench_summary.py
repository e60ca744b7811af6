"""Reading a pytest-benchmark JSON of this suite back: the figures of each case and
contender (medians over the rounds with their min-max spread), which contender is a
peer, the best peer on each metric, and whether a difference is a tie (the spreads
overlap). Shared by report.py, compare.py and readme_table.py."""

from __future__ import annotations

import json
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

# metric -> (header, higher is better, digits): the metrics the tables show, in order.
METRICS = {
    "gbit_per_s": ("Gbit/s", True, 2),
    "rate": ("req/s", True, 0),
    "handshakes_per_s": ("handshakes/s", True, 0),
    "resumed_share": ("resumed share", True, 3),
    "offered_rate": ("offered req/s", True, 0),
    "closed_loop_rate": ("own closed-loop max req/s", True, 0),
    "p50_us": ("p50 µs", False, 0),
    "p99_us": ("p99 µs", False, 0),
    "p999_us": ("p99.9 µs", False, 0),
    "max_us": ("max µs", False, 0),
    # A proxy's latency minus the direct connection's in the same round (bench_series).
    "added_p50_us": ("added p50 µs over direct", False, 0),
    "added_p99_us": ("added p99 µs over direct", False, 0),
    "errors": ("errors", False, 0),
    "time_wait": ("TIME_WAIT", False, 0),
    "proxy_cpu_ms_per_gb": ("proxy CPU ms/GB", False, 0),
    "shared_cpu_ms_per_gb": ("shared CPU ms/GB", False, 0),
    "all_cpu_ms_per_gb": ("all CPUs ms/GB", False, 0),
    "proxy_cpu_us_per_req": ("proxy CPU µs/req", False, 1),
    "shared_cpu_us_per_req": ("shared CPU µs/req", False, 1),
    "proxy_cpu_us_per_handshake": ("proxy CPU µs/handshake", False, 1),
    "shared_cpu_us_per_handshake": ("shared CPU µs/handshake", False, 1),
    "total_b_per_conn": ("total B/conn", False, 0),
    "proxy_rss_b_per_conn": ("proxy RSS B/conn", False, 0),
    "kernel_slab_b_per_conn": ("kernel slab B/conn", False, 0),
    "pipes": ("pipes", False, 0),
    "startup_ms": ("start-up ms", False, 0),
    "rss_mib": ("RSS MiB", False, 1),
    "kernel_slab_mib": ("kernel slab MiB", False, 1),
    "change_ms": ("reload/upgrade ms", False, 0),
    "request_ms": ("request ms", False, 0),
    "accepting_ms": ("accepting ms", False, 0),
    "new_ports_accepting": ("new ports accepting", True, 0),
    "load_rate": ("load conn/s", True, 0),
    "ports_hit": ("ports answered", True, 0),
    "checks_per_s": ("checks/s", True, 0),
    "push_p50_ms": ("push to all p50 ms", False, 0),
    "push_max_ms": ("push to all max ms", False, 0),
    "busiest_thread_share": ("busiest thread's CPU share", False, 2),
    "client_cpu_share": ("load generator's CPU share", False, 2),
}
# The figures of the headline table (README and RESULTS.md), per case prefix.
KEY = {
    "bulk-": ("gbit_per_s", "proxy_cpu_ms_per_gb", "shared_cpu_ms_per_gb", "all_cpu_ms_per_gb"),
    # Churn: one request per connection, so its proxy CPU per request is per connection.
    "http-churn": ("rate", "errors", "proxy_cpu_us_per_req"),
    "http-keepalive": ("rate", "p99_us", "proxy_cpu_us_per_req", "shared_cpu_us_per_req"),
    "http-latency": ("p50_us", "p99_us", "added_p50_us", "added_p99_us"),
    "http-concurrent-100": ("rate", "p99_us"),
    "http-concurrent": ("rate", "p99_us"),
    "openloop-": ("p50_us", "p99_us", "p999_us", "added_p50_us"),
    "size-": ("gbit_per_s",),
    "workers-": ("rate", "busiest_thread_share"),
    "target-": ("rate", "p99_us"),
    "reload-under-load": ("change_ms", "errors", "max_us"),
    "idle-memory": ("total_b_per_conn",),
    "ports-startup": ("startup_ms", "rss_mib", "kernel_slab_mib"),
    "ports-spread": ("rate", "errors", "proxy_cpu_us_per_req"),
    "reload-adding-ports": ("errors", "accepting_ms"),
    "tls-full-": ("handshakes_per_s", "proxy_cpu_us_per_handshake", "p99_us"),
    "tls-resumed-": ("handshakes_per_s", "proxy_cpu_us_per_handshake", "p99_us"),
    "tls-bulk-": ("gbit_per_s", "proxy_cpu_ms_per_gb", "shared_cpu_ms_per_gb"),
    "tls-keepalive-": ("rate", "p99_us", "proxy_cpu_us_per_req"),
}
OURS = "fastproxy"


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def overlaps(self, other: Spread) -> bool:
        return self.low <= other.high and other.low <= self.high

    def show(self, digits: int) -> str:
        if self.low == self.high:
            return f"{self.median:,.{digits}f}"
        # "to" where a bound is negative (an added latency): "[-25-53]" would misread.
        between = " to " if self.low < 0 else "-"
        return f"{self.median:,.{digits}f} [{self.low:,.{digits}f}{between}{self.high:,.{digits}f}]"


@dataclass
class Case:
    name: str
    info: dict
    figures: dict[str, dict[str, Spread]]  # contender -> metric -> spread
    # contender -> metric -> one value per round, in round order: the contenders take
    # turns, so round i of each ran in the same turn (paired()).
    rounds: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def contenders(self) -> list[str]:
        return list(self.figures)

    def metrics(self) -> list[str]:
        present = {m for values in self.figures.values() for m in values}
        return [m for m in METRICS if m in present]

    def key_metrics(self) -> list[str]:
        for prefix, metrics in KEY.items():
            if self.name.startswith(prefix):
                return [m for m in metrics if m in self.metrics()]
        return []

    def best_peer(self, metric: str) -> str | None:
        """The peer with the best median on `metric` (never a chosen one)."""
        higher = METRICS[metric][1]
        peers = [n for n in self.figures if is_peer(n) and metric in self.figures[n]]
        if not peers:
            return None
        pick = max if higher else min
        return pick(peers, key=lambda n: self.figures[n][metric].median)


def is_peer(name: str) -> bool:
    return name != "direct" and not name.startswith(OURS)


def verdict(case: Case, contender: str, metric: str, against: str) -> str:
    """ "1.12× better", "0.80× worse" or "tie" (the spreads overlap): contender's median
    relative to `against`'s, turned so that above 1 is better."""
    mine, theirs = case.figures[contender][metric], case.figures[against][metric]
    if mine.overlaps(theirs):
        return "tie"
    higher = METRICS[metric][1]
    if theirs.median <= 0 or mine.median <= 0:  # no ratio of a 0 or of a negative (added µs)
        return "better" if (mine.median > theirs.median) == higher else "worse"
    advantage = mine.median / theirs.median if higher else theirs.median / mine.median
    return f"{advantage:.2f}× {'better' if advantage > 1 else 'worse'}"


def paired(case: Case, contender: str, metric: str, against: str) -> str:
    """Round by round, how often `contender` did better than `against` on `metric`, and
    the range of its per-round advantage (above 1 is better): "better in 5 of 5 rounds,
    1.04-1.09×". It shows a consistent difference that the min-max test calls a tie. A
    round with a 0 on the dividing side has a winner but no ratio."""
    wins, count, advantages = round_wins(case, contender, metric, against)
    if not count:
        return "-"
    text = f"better in {wins} of {count} rounds"
    if advantages:
        low, high = min(advantages), max(advantages)
        text += f", {low:.2f}×" if f"{low:.2f}" == f"{high:.2f}" else f", {low:.2f}-{high:.2f}×"
    return text


def round_wins(
    case: Case, contender: str, metric: str, against: str
) -> tuple[int, int, list[float]]:
    """(rounds `contender` did better in, rounds paired, the per-round advantages: above
    1 is better, none for a round with a 0 on the dividing side or a negative value)."""
    mine = case.rounds.get(contender, {}).get(metric, [])
    theirs = case.rounds.get(against, {}).get(metric, [])
    count = min(len(mine), len(theirs))
    higher = METRICS[metric][1]
    wins = 0
    advantages = []
    for a, b in zip(mine[:count], theirs[:count]):
        if a != b and (a > b) == higher:
            wins += 1
        top, bottom = (a, b) if higher else (b, a)
        if bottom > 0 and top >= 0:  # no ratio of a negative (an added latency below 0)
            advantages.append(top / bottom)
    return wins, count, advantages


def haproxy_splice_note(cases: list[Case]) -> list[str]:
    """What HAProxy's splice modes did in the 1-stream bulk case, from its figures:
    whether `splice-auto` spliced at all (its proxy CPU per GB against no-splice's and
    forced splice's), and so what kind of HAProxy the best peer on Gb/s is."""
    bulk = next((c for c in cases if c.name == "bulk-1stream"), None)
    if bulk is None:
        return []
    cpu = {n: bulk.figures.get(n, {}).get("proxy_cpu_ms_per_gb") for n in HAPROXY}
    auto, copying, forced = (cpu[n] for n in HAPROXY)
    if auto is None or copying is None:
        return []
    digits = METRICS["proxy_cpu_ms_per_gb"][2]
    seen = (
        f"HAProxy's proxy CPU per GB, 1 stream (iperf3): `splice-auto` {auto.show(digits)},"
        f" no splice {copying.show(digits)}"
        + (
            f", forced splice (`option splice-request/splice-response`) {forced.show(digits)}"
            if forced
            else ""
        )
    )
    like_copying = auto.overlaps(copying)
    like_splicing = forced is not None and auto.overlaps(forced)
    copiers = {"haproxy-nosplice"}
    if like_copying and not like_splicing:
        said = (
            ": `splice-auto` costs what copying does (the spreads overlap) and not what"
            " forced splice does, so under iperf3 it does not splice: it is a copying HAProxy."
        )
        copiers.add("haproxy-splice-auto")
    elif like_splicing and not like_copying:
        said = ": `splice-auto` costs what forced splice does: it splices here."
    else:
        said = ": the proxy CPU does not tell whether `splice-auto` spliced here."
    best = bulk.best_peer("gbit_per_s")
    kind = "a copying HAProxy" if best in copiers else "not a copying HAProxy"
    return [f"{seen}{said} The best peer on 1-stream Gbit/s is {best}: {kind}."]


HAPROXY = ("haproxy-splice-auto", "haproxy-nosplice", "haproxy-splice")


def ratio(case: Case, contender: str, metric: str, to: str) -> str:
    mine = case.figures.get(contender, {}).get(metric)
    theirs = case.figures.get(to, {}).get(metric)
    if mine is None or theirs is None or not theirs.median:
        return "-"
    return f"{mine.median / theirs.median:.2f}×"


def load(path: Path) -> tuple[dict, list[Case]]:
    """(the run's description, its cases in run order)."""
    data = json.loads(path.read_text())
    cases: dict[str, Case] = {}
    for bench in data["benchmarks"]:
        info = dict(bench["extra_info"])
        name, contender = info.pop("case"), info.pop("contender")
        metrics = info.pop("metrics")
        info.pop("raw", None)
        case = cases.setdefault(name, Case(name, info, {}))
        case.figures[contender] = {m: Spread.of(v) for m, v in metrics.items() if v}
        case.rounds[contender] = {m: list(v) for m, v in metrics.items() if v}
    return data, list(cases.values())


def refuse_dirty(data: dict) -> None:
    """Results measured on a tree with uncommitted changes trace to no commit."""
    if data.get("commit_info", {}).get("dirty") and os.environ.get("BENCH_ALLOW_DIRTY") != "1":
        sys.exit("these results come from a dirty tree (set BENCH_ALLOW_DIRTY=1 to use them)")


def stamp(data: dict) -> str:
    commit = data.get("commit_info", {})
    dirty = " (dirty tree)" if commit.get("dirty") else ""
    when = data.get("datetime", "")[:16].replace("T", " ")
    return f"fastproxy at {commit.get('id', 'unknown')[:12]}{dirty}, run {when} UTC"


def latest(results: Path) -> Path:
    runs = sorted(results.glob("bench-*.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        sys.exit(f"no bench-*.json in {results}: run `make bench` first")
    return runs[-1]
