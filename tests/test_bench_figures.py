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
from bench_summary import Case, Spread, haproxy_splice_note, paired, verdict  # noqa: E402
from readme_table import table  # noqa: E402
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
        # A load around an event, as long as the event takes: what it ran is its text.
        Case("reload-adding-ports", {"load": "portspread until 1 s after the reload"}, {}),
        Case("target-slow", {"connections": 32}, {}),  # a run that recorded no length
    ]
    assert durations(cases) == [
        "- http-keepalive, size-64: wrk, 5 s per round",
        "- http-concurrent: openloop closed loop, 5 s per round, counted after a 1 s warm-up",
        "- openloop-25%: openloop, 0.3 s per round",
        "- bulk-1stream, health-check-cost: iperf3, a fixed 2G per round (timed by the transfer)",
        "- ports-startup: no timed load (start-ups, config pushes, connections held)",
        "- reload-adding-ports: portspread until 1 s after the reload",
        "- target-slow: not recorded in this run's JSON (a run from before it recorded them)",
    ]


def with_rounds(values: dict[str, dict[str, list[float]]]) -> Case:
    figures = {n: {m: Spread.of(v) for m, v in ms.items()} for n, ms in values.items()}
    return Case("http-keepalive", {}, figures, values)


def test_paired_rounds_show_a_consistent_difference_the_spreads_call_a_tie() -> None:
    """Issue 25 finding 5: keep-alive copy vs nginx was a tie by min-max, yet better in
    5 of 5 paired rounds."""
    case = with_rounds(
        {
            "fastproxy-copy": {"rate": [104, 106, 109, 108, 105]},
            "nginx-stream": {"rate": [100, 101, 106, 100, 98]},
        }
    )
    assert verdict(case, "fastproxy-copy", "rate", "nginx-stream") == "tie"
    assert paired(case, "fastproxy-copy", "rate", "nginx-stream") == (
        "better in 5 of 5 rounds, 1.03-1.08×"
    )
    # Lower is better for a latency: turned so that above 1 is still better.
    case = with_rounds({"a": {"p99_us": [90, 120]}, "b": {"p99_us": [100, 100]}})
    assert paired(case, "a", "p99_us", "b") == "better in 1 of 2 rounds, 0.83-1.11×"


def test_paired_rounds_with_zeros_or_missing_rounds_never_divide_by_zero() -> None:
    case = with_rounds({"a": {"p99_us": [10, 0]}, "b": {"p99_us": [0, 5]}})
    # Round 2 is won (0 < 5) but has no ratio; round 1's is 0/10.
    assert paired(case, "a", "p99_us", "b") == "better in 1 of 2 rounds, 0.00×"
    case = with_rounds({"a": {"rate": [0.0, 0.0]}, "b": {"rate": [0.0]}})
    assert paired(case, "a", "rate", "b") == "better in 0 of 1 rounds"
    assert paired(case, "a", "rate", "missing") == "-"


def bulk(auto: list[float], copying: list[float], forced: list[float], best: str) -> Case:
    gbit = {n: 10.0 for n in ("haproxy-splice-auto", "haproxy-nosplice", "haproxy-splice")}
    gbit[best] = 12.0
    values = {
        "haproxy-splice-auto": {"proxy_cpu_ms_per_gb": auto},
        "haproxy-nosplice": {"proxy_cpu_ms_per_gb": copying},
        "haproxy-splice": {"proxy_cpu_ms_per_gb": forced},
    }
    for name, rate in gbit.items():
        values[name]["gbit_per_s"] = [rate]
    figures = {n: {m: Spread.of(v) for m, v in ms.items()} for n, ms in values.items()}
    return Case("bulk-1stream", {}, figures, values)


def test_the_report_says_whether_haproxy_splice_auto_spliced() -> None:
    """Issue 25 finding 6: under iperf3 splice-auto's proxy CPU equals no-splice's, so
    the best peer on 1-stream Gb/s is a copying HAProxy; said from the figures."""
    (note,) = haproxy_splice_note(
        [bulk([261, 298, 350], [266, 308, 334], [131, 146, 155], "haproxy-splice-auto")]
    )
    assert "so under iperf3 it does not splice: it is a copying HAProxy." in note
    assert note.endswith(
        "The best peer on 1-stream Gbit/s is haproxy-splice-auto: a copying HAProxy."
    )
    (note,) = haproxy_splice_note([bulk([140, 150], [266, 308], [131, 155], "haproxy-splice")])
    assert "costs what forced splice does: it splices here" in note
    assert note.endswith("is haproxy-splice: not a copying HAProxy.")
    (note,) = haproxy_splice_note([bulk([100, 300], [266, 308], [131, 155], "haproxy-splice")])
    assert "does not tell" in note
    assert haproxy_splice_note([]) == []


def test_the_readme_shows_the_variants_of_cases_without_copy_and_splice() -> None:
    """Issue 25 finding 7: start-up, reload and workers showed "-" for fastproxy, hiding
    a loss (ports-mode start-up 197 vs 121 ms) and a win (reload 15 vs 106 ms)."""
    lines = table(
        Path(__file__).resolve().parent.parent / "benchmarks/results/bench-5685c7d81be1.json"
    )
    startup = next(line for line in lines if line.startswith("| ports-startup | start-up ms |"))
    assert "fastproxy-ports 197 [186-208] (0.61× worse; better in 0 of 5 rounds" in startup
    reload = next(line for line in lines if line.startswith("| reload-under-load | reload/"))
    assert "fastproxy-reload 15 [9-16] (7.01× better; better in 5 of 5 rounds" in reload
    workers = next(line for line in lines if line.startswith("| workers-churn | req/s |"))
    assert "fastproxy-splice-2w 21,824" in workers
