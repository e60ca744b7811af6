"""Fixtures for the benchmarks (the contenders, started once for the session), and the
report: a table printed at the end of the run and written to results/throughput.md."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench_contenders import REPS, SECONDS, WORKERS, Contenders
from bench_procs import CLIENT_CPU, HOST, SERVER_CPU
from bench_report import Results

HERE = Path(__file__).resolve().parent
RESULTS_FILE = HERE / "results" / "throughput.md"

results_key = pytest.StashKey[Results]()

LOAD_BEFORE = " ".join(Path("/proc/loadavg").read_text().split()[:3])


def pytest_configure(config: pytest.Config) -> None:
    config.stash[results_key] = Results()


@pytest.fixture(scope="session")
def results(request: pytest.FixtureRequest) -> Results:
    return request.config.stash[results_key]


@pytest.fixture(scope="session", autouse=True)
def _prerequisites() -> None:
    for tool in ("iperf3", "taskset"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (scripts/install-bench-deps.sh)")
    if not {CLIENT_CPU, SERVER_CPU} <= os.sched_getaffinity(0):
        pytest.skip(f"the benchmarks pin to CPUs {CLIENT_CPU} and {SERVER_CPU}")


@pytest.fixture(scope="session")
def contenders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Contenders]:
    running = Contenders(tmp_path_factory.mktemp("contenders"))
    try:
        yield running
    finally:
        running.stop()


# -- report -----------------------------------------------------------------------


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    results = config.stash.get(results_key, None)
    if results is None or not any(r.transfers for r in results.rows.values()):
        return
    report = "\n".join([*_describe_run(), "", results.table(), "", *_definitions()])
    terminalreporter.write_sep("=", "fastproxy throughput")
    for line in report.splitlines():
        terminalreporter.write_line(line)
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(f"# Bulk throughput\n\n{report}\n")
    terminalreporter.write_line(f"written to {RESULTS_FILE.relative_to(HERE.parent)}")


def _describe_run() -> list[str]:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = _first_line(["git", "-C", str(HERE), "describe", "--always", "--dirty"])
    return [
        f"- run: {now}, fastproxy at {commit}",
        f"- machine: {_cpu_model()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
        f"- tools: {_first_line(['iperf3', '--version'])}; {_first_line(['haproxy', '-v'])}",
        f"- CPU layout (taskset): iperf3 client on CPU {CLIENT_CPU}; iperf3 server and the "
        f"proxy on CPU {SERVER_CPU}; fastproxy --workers {WORKERS}, HAProxy nbthread 1",
        f"- each figure: {REPS} transfers of {SECONDS:g} s over {HOST}, each to a fresh "
        "`iperf3 -s -1`; the contenders take turns, one transfer each per round",
        f"- load average before the run: {LOAD_BEFORE} (other work on the machine skews "
        "the figures)",
    ]


def _definitions() -> list[str]:
    return [
        "- Gbit/s: bytes the server received over its measured time (10^9 bits/s).",
        "- × direct, × HAProxy splice: ratios of medians, same stream count.",
        "- proxy CPU: utime+stime of the whole proxy process (/proc/PID/stat) from just "
        "before the client starts to just after it exits, per 10^9 bytes received. On "
        "loopback the kernel's receive work for the server's socket is charged to "
        "whichever task runs it on the shared CPU, the proxy or the server.",
        "- targets (issue 2, never asserted): fastproxy-splice, 1 stream, at least 0.70× "
        "direct and at most 150 ms/GB; reference: HAProxy 2.6 splice 0.61×, ~140 ms/GB.",
    ]


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return f"{argv[0]}: unavailable"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else f"{argv[0]}: unavailable"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
