"""One case of the benchmarks, run fairly: a pytest-benchmark benchmark per contender
whose rounds are real repetitions of the load (benchmark.pedantic), the contenders'
rounds interleaved (A, B, C, then A, B, C again) so that a drift in the machine's speed
spreads over all of them instead of skewing one.

Each contender's pedantic() runs in its own thread; a baton handed on in the untimed
setup/teardown of each round lets exactly one load run at a time, in turn. The figures
of each round (Gb/s, CPU per GB, percentiles...) go to the benchmark's extra_info, and
the raw tool outputs to results/raw/<case>.jsonl.gz."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench_config import RAW_DIR, REPS
from bench_contenders import DIRECT, PEERS

# One round of one contender: its figures, and the raw output of the tool that made them.
Measure = Callable[[str], tuple[dict[str, float], str]]


class Baton:
    """Whose turn it is, among the contenders still running, in a fixed order."""

    def __init__(self, names: list[str]) -> None:
        self.ring = list(names)
        self.turn = 0
        self.cond = threading.Condition()

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.ring[self.turn] == name)

    def passes(self, name: str) -> None:
        with self.cond:
            if self.ring and self.ring[self.turn] == name:
                self.turn = (self.turn + 1) % len(self.ring)
            self.cond.notify_all()

    def leave(self, name: str) -> None:
        """`name` has no rounds left (done, or failed): the others go on without it."""
        with self.cond:
            if name in self.ring:
                index = self.ring.index(name)
                self.ring.remove(name)
                if index < self.turn:
                    self.turn -= 1
                if self.ring:
                    self.turn %= len(self.ring)
            self.cond.notify_all()


def _fixture(request: pytest.FixtureRequest, case: str, contender: str) -> BenchmarkFixture:
    """A benchmark fixture of its own for `contender`, made as pytest-benchmark's
    `benchmark` fixture makes one, so that the contender is a benchmark of its own in
    the JSON (named `case[contender]`) and in --benchmark-compare."""
    session = request.config._benchmarksession  # type: ignore[attr-defined]
    node = SimpleNamespace(
        name=f"{case}[{contender}]",
        nodeid=f"{request.node.nodeid}::{contender}",
        callspec=SimpleNamespace(id=contender, params={"case": case, "contender": contender}),
    )
    fixture = BenchmarkFixture(
        node,
        add_stats=session.benchmarks.append,
        logger=session.logger,
        warner=request.node.warn,
        disabled=session.disabled,
        **session.options,
    )
    fixture.group = case
    request.addfinalizer(fixture._cleanup)
    return fixture


def run_series(
    request: pytest.FixtureRequest,
    case: str,
    names: list[str],
    measure: Measure,
    *,
    rounds: int = REPS,
    info: dict | None = None,
    over_direct: tuple[str, ...] = (),
) -> dict[str, dict[str, list[float]]]:
    """REPS interleaved rounds of `measure` for each contender in `names`; returns
    contender -> metric -> one value per round. A contender whose load fails is
    dropped from the rest of the series and fails the test at the end. `over_direct`:
    metrics (latencies) also recorded as what each proxy adds to the direct
    connection's (added_over_direct)."""
    if request.config._benchmarksession.skip:  # type: ignore[attr-defined]
        pytest.skip("--benchmark-skip")
    figures: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    raw_of: dict[str, list[dict]] = {name: [] for name in names}
    errors: dict[str, BaseException] = {}
    retried: dict[str, str] = {}  # peer -> the error its one retried round had
    baton = Baton(names)

    def one_contender(name: str, fixture: BenchmarkFixture) -> None:
        def one_round() -> None:
            started = time.time()
            line: dict = {"contender": name, "round": len(raw_of[name]), "at": started}
            try:
                values, output = measure(name)
            except Exception as exc:
                # A peer's round that fails (a tool's own hiccup: iperf3 through the
                # asyncio proxy once lost its control connection on a busy machine) gets
                # one more try, written down in the raw output. Only the named peers:
                # never fastproxy, direct, or a case's own variants.
                if name not in PEERS or name in retried:
                    raise
                retried[name] = repr(exc)
                line["retried_after"] = repr(exc)
                values, output = measure(name)
            for metric, value in values.items():
                figures[name].setdefault(metric, []).append(value)
            raw_of[name].append({**line, "output": output})

        try:
            fixture.pedantic(
                one_round,
                setup=lambda: baton.wait(name),
                teardown=lambda: baton.passes(name),
                rounds=rounds,
            )
        except BaseException as exc:  # reported by the test, after the others finished
            errors[name] = exc
        finally:
            baton.leave(name)

    fixtures = {name: _fixture(request, case, name) for name in names}
    threads = [
        threading.Thread(target=one_contender, args=(name, fixtures[name]), name=name)
        for name in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    added_over_direct(figures, over_direct)
    raw_path = RAW_DIR / f"{case}.jsonl.gz"
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(raw_path, "wt") as out:
        for name in names:
            for line in raw_of[name]:
                out.write(json.dumps(line) + "\n")
    for name, fixture in fixtures.items():
        fixture.extra_info.update(
            {"case": case, "contender": name, "metrics": figures[name], "raw": raw_path.name}
        )
        fixture.extra_info.update(info or {})
        if name in retried:
            fixture.extra_info["retried_after"] = retried[name]
    if errors:
        name, exc = next(iter(errors.items()))
        raise AssertionError(f"{case}: {', '.join(errors)} failed; {name}: {exc!r}") from exc
    for name in names:
        assert figures[name], f"{case}: {name} produced no figure"
    return figures


def added_over_direct(figures: dict[str, dict[str, list[float]]], metrics: tuple[str, ...]) -> None:
    """For each proxy and each of `metrics`: its value minus the direct connection's in
    the same round (the contenders take turns, so round i of each ran in the same turn),
    as `added_<metric>`: the latency the proxy adds, each round against the machine's
    state of that moment. Nothing without a direct connection in the series, nor where
    a round has no such figure (a stalled round's rate of 0 has no latency): then the
    rounds cannot be paired."""
    direct = figures.get(DIRECT, {})
    for name, values in figures.items():
        if name == DIRECT:
            continue
        for metric in metrics:
            mine, base = values.get(metric, []), direct.get(metric, [])
            if mine and len(mine) == len(base):
                values[f"added_{metric}"] = [a - b for a, b in zip(mine, base)]
