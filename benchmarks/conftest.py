"""Fixtures for the benchmarks (the backends and the contenders, started once for the
session), and the report written at the end of the run: RESULTS.md (every figure),
results/summary.png (the chart), results/throughput.md and results/results.json."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench_backends import Holder, start_nginx
from bench_chart import draw, summary_columns, summary_table
from bench_contenders import BPF, REPS, SECONDS, WORKERS, Contenders
from bench_figures import make_figures
from bench_procs import CLIENT_CPU, HOST, SERVER_CPU, ForeignCpu, free_ports
from bench_report import Figure, Results

HERE = Path(__file__).resolve().parent
RESULTS_FILE = HERE / "results" / "throughput.md"
REPORT_FILE = HERE / "RESULTS.md"
CHART_FILE = HERE / "results" / "summary.png"
JSON_FILE = HERE / "results" / "results.json"

results_key = pytest.StashKey[Results]()
figures_key = pytest.StashKey[dict[str, Figure]]()
started_key = pytest.StashKey[datetime.datetime]()
foreign_key = pytest.StashKey[ForeignCpu]()

LOAD_BEFORE = " ".join(Path("/proc/loadavg").read_text().split()[:3])


def pytest_configure(config: pytest.Config) -> None:
    config.stash[results_key] = Results()
    config.stash[figures_key] = make_figures()
    config.stash[started_key] = datetime.datetime.now(datetime.timezone.utc)
    config.stash[foreign_key] = ForeignCpu()


@pytest.fixture(scope="session")
def results(request: pytest.FixtureRequest) -> Results:
    return request.config.stash[results_key]


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> dict[str, Figure]:
    return request.config.stash[figures_key]


@pytest.fixture(scope="session", autouse=True)
def _prerequisites() -> None:
    for tool in ("iperf3", "taskset"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (scripts/install-bench-deps.sh)")
    if not {CLIENT_CPU, SERVER_CPU} <= os.sched_getaffinity(0):
        pytest.skip(f"the benchmarks pin to CPUs {CLIENT_CPU} and {SERVER_CPU}")


@pytest.fixture(scope="session")
def backend_ports() -> tuple[int, int]:
    """(nginx, holder): the backends every contender relays to, besides iperf3."""
    http, hold = free_ports(2)
    return http, hold


@pytest.fixture(scope="session")
def nginx(backend_ports: tuple[int, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    if shutil.which("wrk") is None:
        pytest.skip("wrk not installed (scripts/install-bench-deps.sh)")
    try:
        server = start_nginx(backend_ports[0], tmp_path_factory.mktemp("nginx"))
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        yield
    finally:
        server.stop()


@pytest.fixture(scope="session")
def holder(
    backend_ports: tuple[int, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Holder]:
    held = Holder(backend_ports[1], tmp_path_factory.mktemp("holder"))
    try:
        yield held
    finally:
        held.close()


@pytest.fixture(scope="session")
def contenders(
    tmp_path_factory: pytest.TempPathFactory, backend_ports: tuple[int, int]
) -> Iterator[Contenders]:
    running = Contenders(tmp_path_factory.mktemp("contenders"), *backend_ports)
    try:
        yield running
    finally:
        running.stop_all()


# -- report -----------------------------------------------------------------------


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    results = config.stash.get(results_key, None)
    figures = config.stash.get(figures_key, {})
    filled = {key: f for key, f in figures.items() if f.rows()}
    has_throughput = results is not None and any(r.transfers for r in results.rows.values())
    if not has_throughput and not filled:
        return
    results = results or Results()
    run = _describe_run(config.stash[started_key], config.stash[foreign_key])
    (HERE / "results").mkdir(exist_ok=True)
    if has_throughput:
        report = "\n".join([*run, "", results.table(), "", *_definitions()])
        RESULTS_FILE.write_text(f"# Bulk throughput\n\n{report}\n")
    columns = summary_columns(results, filled)
    sections = ["# fastproxy benchmarks", "", *run, ""]
    if columns:
        when, _, commit = run[0].removeprefix("- run: ").partition(", fastproxy at ")
        drawn = draw(columns, CHART_FILE, f"{when.split(' (')[0]}, fastproxy at {commit}")
        chart = "![summary](results/summary.png)" if drawn else "(no chart: matplotlib missing)"
        sections += [
            "## At a glance",
            "",
            chart,
            "",
            "Each proxy's median relative to HAProxy with splice, turned so that above 1 "
            "is better (more throughput, connections or requests; less CPU, latency or "
            "memory):",
            "",
            summary_table(columns),
            "",
        ]
    if has_throughput:
        sections += ["## Bulk throughput and CPU per GB", "", results.table(), ""]
        sections += [*_definitions(), ""]
    for figure in filled.values():
        sections += [f"## {figure.title}", "", figure.table(), "", *figure.notes, ""]
        if figure is filled.get("connect"):
            sections += _steering_cost(figure)
    sections += [
        "Profiles of the relay under these loads, and what limits it: "
        "[results/PROFILE.md](results/PROFILE.md).",
    ]
    REPORT_FILE.write_text("\n".join(sections) + "\n")
    JSON_FILE.write_text(
        json.dumps(
            {
                "run": run,
                "throughput": [results.summary(row) for row in results.rows.values()],
                "figures": {key: f.summary() for key, f in filled.items()},
            },
            indent=1,
        )
    )
    terminalreporter.write_sep("=", "fastproxy benchmarks")
    for line in sections:
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"written to {REPORT_FILE.relative_to(HERE.parent)}")


def _steering_cost(figure: Figure) -> list[str]:
    ratio = figure.column("conn/s").ratio(BPF, "fastproxy-splice")
    if ratio is None:
        return []
    return [
        f"Steering cost (issue 3: at most 5%): {BPF} makes {ratio:.3f}× the new connections "
        f"per second of fastproxy-splice with one socket per port ({(ratio - 1) * 100:+.1f}%).",
        "",
    ]


def _describe_run(started: datetime.datetime, foreign: ForeignCpu) -> list[str]:
    now = datetime.datetime.now(datetime.timezone.utc)
    commit = _first_line(["git", "-C", str(HERE), "describe", "--always", "--dirty"])
    minutes = (now - started).total_seconds() / 60
    return [
        f"- run: {now:%Y-%m-%d %H:%M} UTC ({minutes:.1f} min), fastproxy at {commit}",
        f"- machine: {_cpu_model()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
        f"- tools: {_first_line(['iperf3', '--version'])}; {_first_line(['haproxy', '-v'])}; "
        f"{_first_line(['wrk', '-v']).split(' Copyright')[0]}; {_first_line(['nginx', '-v'])}; "
        f"Python {platform.python_version()}, uvloop {_version('uvloop')}",
        f"- CPU layout (taskset): load generators (iperf3 client, wrk, the idle-connection "
        f"client) on CPU {CLIENT_CPU}; the servers (iperf3 server, nginx) and the proxy on CPU "
        f"{SERVER_CPU}; one thread per proxy: fastproxy --workers {WORKERS}, HAProxy nbthread "
        "1, one event loop for the Python proxies",
        f"- each figure: median [min-max] of {REPS} repetitions of {SECONDS:g} s over {HOST}; "
        "the contenders take turns, one repetition each per round",
        f"- load average before the run: {LOAD_BEFORE}; during the run, other work on the "
        f"machine used {_foreign(foreign)} (it skews the figures: compare runs only when "
        "it is low)",
    ]


def _foreign(foreign: ForeignCpu) -> str:
    other, ours, steal = foreign.seconds()
    return f"{other:.0f} CPU-s next to the benchmarks' {ours:.0f} (hypervisor steal {steal:.0f} s)"


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


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
