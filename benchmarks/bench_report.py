"""The throughput table: each figure a median over repetitions with its min-max spread,
throughput also as ratios of medians to the direct connection and to HAProxy."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench_contenders import CONTENDERS, DIRECT, HAPROXY
from bench_iperf import Transfer


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def show(self, digits: int) -> str:
        return f"{self.median:.{digits}f} [{self.low:.{digits}f}-{self.high:.{digits}f}]"


@dataclass
class Row:
    contender: str
    streams: int
    transfers: list[Transfer] = field(default_factory=list)

    @property
    def gbit_per_s(self) -> Spread:
        return Spread.of([t.gbit_per_s for t in self.transfers])

    @property
    def cpu_ms_per_gb(self) -> Spread | None:
        values = [t.cpu_ms_per_gb for t in self.transfers if t.cpu_ms_per_gb is not None]
        return Spread.of(values) if values else None


class Results:
    """Rows by (contender, streams), filled in as the benchmarks run."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], Row] = {}

    def row(self, contender: str, streams: int) -> Row:
        return self.rows.setdefault((contender, streams), Row(contender, streams))

    def ratio(self, row: Row, to: str) -> float | None:
        """Median throughput of `row` over that of contender `to`, same stream count."""
        other = self.rows.get((to, row.streams))
        if other is None or not other.transfers or not row.transfers:
            return None
        return row.gbit_per_s.median / other.gbit_per_s.median

    def summary(self, row: Row) -> dict[str, object]:
        """The row's figures, for pytest-benchmark's JSON."""
        cpu = row.cpu_ms_per_gb
        return {
            "contender": row.contender,
            "streams": row.streams,
            "gbit_per_s": [round(t.gbit_per_s, 3) for t in row.transfers],
            "gbit_per_s_median": round(row.gbit_per_s.median, 3),
            "bytes": [t.bytes for t in row.transfers],
            "proxy_cpu_ms_per_gb": (
                [round(t.cpu_ms_per_gb or 0.0, 1) for t in row.transfers] if cpu else None
            ),
            "proxy_cpu_ms_per_gb_median": round(cpu.median, 1) if cpu else None,
            "ratio_to_direct": _round(self.ratio(row, DIRECT)),
            "ratio_to_haproxy_splice": _round(self.ratio(row, HAPROXY)),
        }

    def table(self) -> str:
        """Markdown, one line per row, in CONTENDERS order within each stream count."""
        order = {name: i for i, name in enumerate(CONTENDERS)}
        rows = sorted(
            (r for r in self.rows.values() if r.transfers),
            key=lambda r: (r.streams, order.get(r.contender, len(order)), r.contender),
        )
        header = (
            "contender",
            "streams",
            "Gbit/s median [min-max]",
            "× direct",
            "× HAProxy splice",
            "proxy CPU ms/GB median [min-max]",
        )
        lines = [_cells(header), _cells(["---"] * len(header))]
        for r in rows:
            cpu = r.cpu_ms_per_gb
            lines.append(
                _cells(
                    (
                        r.contender,
                        str(r.streams),
                        r.gbit_per_s.show(2),
                        _show_ratio(self.ratio(r, DIRECT)),
                        _show_ratio(self.ratio(r, HAPROXY)),
                        cpu.show(0) if cpu else "-",
                    )
                )
            )
        return "\n".join(lines)


def _cells(values: Sequence[str]) -> str:
    return "| " + " | ".join(values) + " |"


def _show_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass
class Column:
    """One measured quantity of a figure: samples per contender (one per repetition)."""

    header: str
    digits: int
    lower_is_better: bool = False
    ratios: bool = False  # also show × direct and × HAProxy splice
    added: bool = False  # also show the median minus direct's (latency a proxy adds)
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, contender: str, value: float) -> None:
        self.samples.setdefault(contender, []).append(value)

    def median(self, contender: str) -> float | None:
        values = self.samples.get(contender)
        return statistics.median(values) if values else None

    def ratio(self, contender: str, to: str) -> float | None:
        mine, theirs = self.median(contender), self.median(to)
        if mine is None or not theirs:
            return None
        return mine / theirs

    def advantage(self, contender: str, over: str) -> float | None:
        """How many times better than `over` (> 1: better), whichever way is better."""
        ratio = self.ratio(contender, over)
        if ratio is None or ratio == 0:
            return None
        return 1 / ratio if self.lower_is_better else ratio

    def headers(self) -> list[str]:
        arrow = "↓" if self.lower_is_better else "↑"
        cells = [f"{self.header} {arrow} median [min-max]"]
        if self.added:
            cells.append(f"{self.header} added")
        if self.ratios and self.samples.get(DIRECT):
            cells.append(f"{self.header} × direct")
        if self.ratios:
            cells.append(f"{self.header} × HAProxy splice")
        return cells

    def cells(self, contender: str) -> list[str]:
        values = self.samples.get(contender)
        cells = [Spread.of(values).show(self.digits) if values else "-"]
        if self.added:
            mine, direct = self.median(contender), self.median(DIRECT)
            added = None if mine is None or direct is None else mine - direct
            cells.append("-" if added is None else f"{added:+.{self.digits}f}")
        if self.ratios and self.samples.get(DIRECT):
            cells.append(_show_ratio(self.ratio(contender, DIRECT)))
        if self.ratios:
            cells.append(_show_ratio(self.ratio(contender, HAPROXY)))
        return cells


@dataclass
class Figure:
    """One table of RESULTS.md: a row per contender (or per variant), some columns."""

    title: str
    notes: list[str]
    columns: list[Column]

    def column(self, header: str) -> Column:
        return next(c for c in self.columns if c.header == header)

    def rows(self) -> list[str]:
        names = {name for c in self.columns for name in c.samples}
        order = {name: i for i, name in enumerate(CONTENDERS)}
        first_seen = {name: i for c in self.columns for i, name in enumerate(c.samples)}
        return sorted(names, key=lambda n: (order.get(n, len(order)), first_seen[n]))

    def table(self) -> str:
        header = ["contender"] + [h for c in self.columns for h in c.headers()]
        lines = [_cells(header), _cells(["---"] * len(header))]
        for name in self.rows():
            lines.append(_cells([name] + [cell for c in self.columns for cell in c.cells(name)]))
        return "\n".join(lines)

    def summary(self) -> dict[str, object]:
        return {
            c.header: {name: [round(v, 6) for v in values] for name, values in c.samples.items()}
            for c in self.columns
        }
