"""The benchmarks' arithmetic on what a tiny smoke run (test_bench_smoke.py) can meet:
a round in which iperf3's server counted no byte, a CPU time below /proc's one-tick
resolution, medians of 0 in the report's targets. Each is an error that says so or a
figure left out, never a ZeroDivisionError and never a made-up number."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_headline import MISSING  # noqa: E402
from bench_iperf import bulk_figures  # noqa: E402
from bench_series import added_over_direct  # noqa: E402
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


def run_json(tmp_path: Path, figures: dict[str, dict[str, dict[str, list[float]]]]) -> Path:
    """A run's JSON as the harness writes it: case -> contender -> metric -> rounds."""
    benchmarks = [
        {"extra_info": {"case": case, "contender": name, "metrics": metrics}}
        for case, contenders in figures.items()
        for name, metrics in contenders.items()
    ]
    path = tmp_path / "bench-synthetic.json"
    path.write_text(
        json.dumps(
            {
                "benchmarks": benchmarks,
                "commit_info": {"id": "0123456789abcdef", "dirty": False},
                "datetime": "2026-12-07T06:00:00",
                "run": {"machine": "Some CPU, 2 CPUs, Linux 6.1"},
            }
        )
    )
    return path


def headline_row(lines: list[str], figure: str) -> list[str]:
    line = next(line for line in lines if line.startswith(f"| {figure} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def cpu_per_gb(ours: float) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Bulk CPU per GB: nginx the best peer at 100 (HAProxy costs more), fastproxy's
    splice at `ours` times that, its copy relay dearer; 5 rounds each, spread ±2 %."""
    rounds = [0.98, 0.99, 1.0, 1.01, 1.02]

    def cpu(median: float) -> dict[str, list[float]]:
        return {"proxy_cpu_ms_per_gb": [median * r for r in rounds], "gbit_per_s": [10.0] * 5}

    return {
        "bulk-1stream": {
            "direct": {"gbit_per_s": [20.0] * 5},
            "haproxy-splice": cpu(130),
            "nginx-stream": cpu(100),
            "fastproxy-copy": cpu(250),
            "fastproxy-splice": cpu(100 * ours),
        }
    }


@pytest.mark.parametrize(("ours", "verdict"), [(0.9, "missed"), (0.7, "met")])
def test_the_headline_judges_proxy_cpu_per_gb_against_the_best_peer(
    tmp_path: Path, ours: float, verdict: str
) -> None:
    """Issue 25's target: fastproxy's own CPU per GB ≤ 0.8× the best peer's."""
    lines = table(run_json(tmp_path, cpu_per_gb(ours)))
    row = headline_row(lines, "proxy CPU ms per GB, bulk 1 stream")
    assert row[1] == "nginx-stream 100 [98-102]"  # the best peer, not HAProxy's 130
    assert row[2].startswith("fastproxy-splice ")  # its best variant, not the copy relay
    assert row[3:] == [f"{ours:.2f}×", "5 of 5", "≤ 0.8× best peer", verdict]
    # Within the spreads of the target: a tie, said as one.
    row = headline_row(
        table(run_json(tmp_path, cpu_per_gb(0.79))), "proxy CPU ms per GB, bulk 1 stream"
    )
    assert row[-1] == "tie (within the spreads)"


def test_the_headline_judges_rates_and_added_latency(tmp_path: Path) -> None:
    def rate(median: float) -> dict[str, list[float]]:
        return {"rate": [median * r for r in (0.99, 1.0, 1.01)]}

    figures = {
        "http-keepalive": {
            "haproxy-nosplice": rate(80_000),
            "nginx-stream": rate(90_000),
            "fastproxy-copy": rate(100_000),
            "fastproxy-splice": rate(110_000),
        },
        "http-latency": {
            "direct": {"p50_us": [80, 80, 80]},
            "haproxy-nosplice": {"p50_us": [100, 100, 100]},
            "uvloop": {"p50_us": [95, 96, 97]},
            "fastproxy-splice": {"p50_us": [85, 86, 120]},
        },
    }
    for values in figures["http-latency"].values():
        values["added_p50_us"] = [v - 80 for v in values["p50_us"]]
    lines = table(run_json(tmp_path, figures))
    row = headline_row(lines, "keep-alive req/s")
    assert row[1:4] == [
        "nginx-stream 90,000 [89,100-90,900]",
        "fastproxy-splice 110,000 [108,900-111,100]",
        "1.22×",
    ]
    assert row[-1] == "met"
    row = headline_row(lines, "added p50 µs over direct, 1 connection")
    assert row[1] == "uvloop 16 [15-17]"
    assert row[2] == "fastproxy-splice 6 [5-40]"  # a wide spread: overlaps the peer's 15-17
    assert row[4] == "2 of 3"
    assert row[-1] == "tie (within the spreads)"


def test_the_headline_of_a_run_without_its_figures_says_so(tmp_path: Path) -> None:
    """The committed run predates the added-latency metrics: "-" and "not measured in
    this run", never an error; the other rows come from the figures it has."""
    lines = table(
        Path(__file__).resolve().parent.parent / "benchmarks/results/bench-5685c7d81be1.json"
    )
    row = headline_row(lines, "added p50 µs over direct, 1 connection")
    assert row[1:5] == ["-"] * 4 and row[-1] == MISSING
    row = headline_row(lines, "proxy CPU µs per keep-alive request")
    assert row[1] == "nginx-stream 7.4 [7.2-7.6]" and row[-1] == "missed"
    assert any("Loopback Gbit/s is bounded by the CPUs" in line for line in lines)
    # An empty run: every row "not measured", nothing raised.
    lines = table(run_json(tmp_path, {}))
    assert sum(line.endswith(f"| {MISSING} |") for line in lines) == 7


def test_a_spread_below_0_reads_as_one() -> None:
    assert Spread(-10, -25, 53).show(0) == "-10 [-25 to 53]"
    assert Spread(10, 5, 53).show(0) == "10 [5-53]"


def test_added_latency_is_each_round_minus_direct_in_the_same_round() -> None:
    figures = {
        "direct": {"p50_us": [80.0, 90.0], "rate": [1.0, 2.0]},
        "nginx-stream": {"p50_us": [100.0, 95.0]},
        "fastproxy-splice": {"p50_us": [85.0]},  # a round without the figure: no pairing
    }
    added_over_direct(figures, ("p50_us",))
    assert figures["nginx-stream"]["added_p50_us"] == [20.0, 5.0]
    assert "added_p50_us" not in figures["fastproxy-splice"]
    assert "added_p50_us" not in figures["direct"]
    no_direct = {"nginx-stream": {"p50_us": [100.0]}}
    added_over_direct(no_direct, ("p50_us",))
    assert no_direct == {"nginx-stream": {"p50_us": [100.0]}}
