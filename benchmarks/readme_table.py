"""Regenerates the README's "How it compares" tables from a committed results JSON: the
headline (bench_headline: what the proxy itself costs, against issue 25's targets), then
fastproxy's relay modes against the best peer on each key metric, ties as ties.

    python benchmarks/readme_table.py [RUN.json]   (default: the newest results/bench-*.json)

Replaces what lies between the README's `<!-- compare:begin -->` and
`<!-- compare:end -->` lines. Refuses results from a dirty tree unless
BENCH_ALLOW_DIRTY=1."""

from __future__ import annotations

import sys
from pathlib import Path

from bench_headline import headline_lines
from bench_summary import (
    METRICS,
    Case,
    haproxy_splice_note,
    latest,
    load,
    paired,
    ratio,
    refuse_dirty,
    stamp,
    verdict,
)

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
OURS = ("fastproxy-copy", "fastproxy-splice")
OTHERS = "fastproxy, the case's own variants"


def table(path: Path) -> list[str]:
    """The headline (what an operator pays), then every key figure of every case."""
    data, cases = load(path)
    refuse_dirty(data)
    lines = [
        "**What an operator pays**",
        "",
        *headline_lines(data, cases),
        "",
        f"Generated from `benchmarks/results/{path.name}` ({stamp(data)}) by "
        "`benchmarks/readme_table.py`; medians of the rounds with their [min-max] "
        "spread; *tie*: the spreads overlap; then how many of the paired rounds (each "
        "round of fastproxy against the same round of the best peer) it won, with the "
        "range of their ratios. Every case and method: "
        "`benchmarks/RESULTS.md`.",
        "",
        "| case | metric | direct | best peer | " + " | ".join(OURS) + " | " + OTHERS + " |",
        "|---|---|---|---|" + "---|" * (len(OURS) + 1),
    ]
    for case in cases:
        for metric in case.key_metrics():
            best = case.best_peer(metric)
            if best is None:
                continue
            digits = METRICS[metric][2]
            cells = [case.name, METRICS[metric][0]]
            direct = case.figures.get("direct", {}).get(metric)
            cells.append(direct.show(digits) if direct else "-")
            cells.append(f"{best} {case.figures[best][metric].show(digits)}")
            for name in OURS:
                mine = case.figures.get(name, {}).get(metric)
                cells.append(cell(case, name, metric, best) if mine else "-")
            # A case run with other fastproxy variants (start-up modes, reload, workers)
            # shows those, losses as well as wins, rather than "-" for copy and splice.
            others = [] if any(n in case.figures for n in OURS) else variants(case, metric)
            cells.append("; ".join(f"{n} {cell(case, n, metric, best)}" for n in others) or "-")
            lines.append("| " + " | ".join(cells) + " |")
    note = haproxy_splice_note(cases)
    return lines + (["", *note] if note else [])


def variants(case: Case, metric: str) -> list[str]:
    return [n for n in case.figures if n.startswith("fastproxy") and metric in case.figures[n]]


def cell(case: Case, name: str, metric: str, best: str) -> str:
    """name's median and spread, its verdict against the best peer with the paired
    rounds, and its ratio to direct where there is one."""
    mine = case.figures[name][metric]
    direct = case.figures.get("direct", {}).get(metric)
    versus = f", {ratio(case, name, metric, 'direct')} direct" if direct else ""
    judged = verdict(case, name, metric, best)
    rounds = paired(case, name, metric, best)
    return f"{mine.show(METRICS[metric][2])} ({judged}; {rounds}{versus})"


def main(argv: list[str]) -> None:
    path = Path(argv[0]) if argv else latest(HERE / "results")
    text = README.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"README.md has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + BEGIN + "\n" + "\n".join(table(path)) + "\n" + END + tail)
    print(f"README.md: table regenerated from {path.name}")


if __name__ == "__main__":
    main(sys.argv[1:])
