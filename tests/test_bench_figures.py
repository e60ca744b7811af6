"""The benchmarks' arithmetic on what a tiny smoke run (test_bench_smoke.py) can meet:
a round in which iperf3's server counted no byte, a CPU time below /proc's one-tick
resolution, medians of 0 in the report's targets. Each is an error that says so or a
figure left out, never a ZeroDivisionError and never a made-up number."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_iperf import bulk_figures  # noqa: E402
from bench_summary import Case, Spread  # noqa: E402
from report import durations  # noqa: E402
from targets import rows  # noqa: E402

SENT = 20 * 2**20  # a smoke run's -n 20M


def end(received: int, seconds: float = 0.043021, sent: int = SENT) -> dict:
    """The part of an iperf3 client's "end" section the figures are made from."""
    return {
        "sum_sent": {"bytes": sent, "seconds": 0.041675},
        "sum_received": {"bytes": received, "seconds": seconds},
    }


CPU = {"proxy_cpu_ms_per_gb": 0.02, "shared_cpu_ms_per_gb": 0.11, "all_cpu_ms_per_gb": 0.2}


def test_a_round_whose_server_counted_no_byte_is_an_error_that_says_so() -> None:
    # The server stops counting when the client's end of the test reaches it: with the
    # whole transfer still in the proxy's and the sockets' buffers, it counted nothing.
    with pytest.raises(RuntimeError, match="counted none of the 20,971,520 bytes sent"):
        bulk_figures(end(0), CPU)
    with pytest.raises(RuntimeError, match="the client sent no byte: no traffic carried"):
        bulk_figures(end(0, sent=0), CPU)


def test_figures_are_per_byte_the_server_counted() -> None:
    figures, unmeasured = bulk_figures(end(16_250_278), CPU)
    gb = 16_250_278 / 1e9
    assert figures == pytest.approx(
        {
            "gbit_per_s": gb * 8 / 0.043021,
            "proxy_cpu_ms_per_gb": 0.02e3 / gb,
            "shared_cpu_ms_per_gb": 0.11e3 / gb,
            "all_cpu_ms_per_gb": 0.2e3 / gb,
        }
    )
    assert unmeasured == {}


def test_cpu_time_below_one_clock_tick_is_no_figure_rather_than_zero() -> None:
    # 20 MB through a proxy can cost it less than one 10 ms tick: /proc reads 0.
    figures, unmeasured = bulk_figures(end(SENT), {**CPU, "proxy_cpu_ms_per_gb": 0.0})
    assert "proxy_cpu_ms_per_gb" not in figures
    assert "less than one clock tick" in unmeasured["proxy_cpu_ms_per_gb"]
    assert figures["shared_cpu_ms_per_gb"] > 0
    # The direct connection has no proxy: no figure, and nothing to explain.
    figures, unmeasured = bulk_figures(end(SENT), {**CPU, "proxy_cpu_ms_per_gb": None})
    assert "proxy_cpu_ms_per_gb" not in figures and unmeasured == {}


def one(value: float) -> Spread:
    return Spread.of([value])


def test_targets_with_medians_of_0_neither_crash_nor_invent_a_ratio() -> None:
    """A stalled wrk round is a rate of 0 (bench_wrk): the targets' ratios must not
    divide by it."""
    keepalive = Case(
        "http-keepalive",
        {},
        {"haproxy-splice-auto": {"rate": one(0.0)}, "fastproxy-splice": {"rate": one(0.0)}},
    )
    many = Case("http-concurrent", {"connections": 200}, {"fastproxy-splice": {"rate": one(5.0)}})
    few = Case("http-concurrent-100", {"connections": 20}, {"fastproxy-splice": {"rate": one(0.0)}})
    table = "\n".join(rows([keepalive, many, few]))
    assert "| keep-alive req/s | ≥ 1.2× best peer |" in table
    assert "haproxy-splice-auto 0: no ratio (both 0) (spreads overlap: tie) | no |" in table
    assert "0 with 20: inf× | yes |" in table  # not lower than with 20


def test_the_durations_are_what_each_case_recorded() -> None:
    """RESULTS.md's durations come from the run's JSON, grouped, never from the config's
    defaults (RESULTS.md once said 2 s where the sweeps ran 1 s)."""
    cases = [
        Case("http-keepalive", {"load": "wrk", "seconds": 5}, {}),
        Case("size-64", {"bytes": 64, "load": "wrk", "seconds": 5}, {}),
        Case(
            "http-concurrent",
            {"load": "openloop closed loop", "seconds": 5.0, "warmup_seconds": 1.0},
            {},
        ),
        Case("openloop-25%", {"load": "openloop", "seconds": 0.3}, {}),
        Case("bulk-1stream", {"bytes": "2G"}, {}),
        Case("health-check-cost", {"load": "iperf3", "bytes": "2G"}, {}),
        Case("ports-startup", {"ports": 10_000}, {}),
        Case("target-slow", {"connections": 32}, {}),  # a run that recorded no length
    ]
    assert durations(cases) == [
        "- http-keepalive, size-64: wrk, 5 s per round",
        "- http-concurrent: openloop closed loop, 5 s per round, counted after a 1 s warm-up",
        "- openloop-25%: openloop, 0.3 s per round",
        "- bulk-1stream, health-check-cost: iperf3, a fixed 2G per round (timed by the transfer)",
        "- ports-startup: no timed load (start-ups, config pushes, connections held)",
        "- target-slow: not recorded in this run's JSON (a run from before it recorded them)",
    ]
