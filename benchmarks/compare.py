"""Regressions between two runs of the suite: every key figure of every contender
(bench_summary.KEY) whose median got worse with the spreads of the two runs apart.

    python benchmarks/compare.py BASELINE.json NEW.json [--fail]

--fail: exit 1 when something regressed (for CI on a quiet machine)."""

from __future__ import annotations

import sys
from pathlib import Path

from bench_summary import METRICS, load


def regressions(baseline: Path, new: Path) -> tuple[list[str], int]:
    """(one line per compared figure, how many regressed)."""
    _, before = load(baseline)
    _, after = load(new)
    old = {case.name: case for case in before}
    lines, worse = [], 0
    for case in after:
        if case.name not in old:
            continue
        for contender, values in case.figures.items():
            for metric in case.key_metrics():
                was = old[case.name].figures.get(contender, {}).get(metric)
                now = values.get(metric)
                if was is None or now is None:
                    continue
                _, higher, digits = METRICS[metric]
                got_worse = (now.median < was.median) if higher else (now.median > was.median)
                if now.overlaps(was):
                    judged = "tie"
                elif got_worse:
                    judged, worse = "REGRESSION", worse + 1
                else:
                    judged = "better"
                lines.append(
                    f"{judged:<10} {case.name}[{contender}] {METRICS[metric][0]}: "
                    f"{was.show(digits)} -> {now.show(digits)}"
                )
    return lines, worse


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv if a != "--fail"]
    if len(paths) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    lines, worse = regressions(*paths)
    lines.sort(key=lambda line: (not line.startswith("REGRESSION"), line))
    print("\n".join(lines))
    print(f"{worse} regression(s) outside the spreads, {len(lines)} figures compared")
    return 1 if worse and "--fail" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
