"""Fixtures for the benchmarks: the backends and the contenders, started once for the
session. The figures go to pytest-benchmark's JSON (--benchmark-json); RESULTS.md and
the chart are made from it by benchmarks/report.py."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench_backends import Holder, start_nginx
from bench_config import REPS
from bench_contenders import Contenders
from bench_procs import CLIENT_CPU, SERVER_CPU, ForeignCpu, free_ports


@pytest.fixture(scope="session", autouse=True)
def _prerequisites() -> None:
    for tool in ("iperf3", "taskset", "wrk", "nginx", "haproxy"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not installed (scripts/install-bench-deps.sh)")
    if not {CLIENT_CPU, SERVER_CPU} <= os.sched_getaffinity(0):
        pytest.skip(f"the benchmarks pin to CPUs {CLIENT_CPU} and {SERVER_CPU}")


@pytest.fixture(scope="session")
def backend_ports() -> tuple[int, int]:
    """(nginx, holder): the backends every contender relays to, besides iperf3."""
    http, hold = free_ports(2)
    return http, hold


@pytest.fixture(scope="session")
def nginx(backend_ports: tuple[int, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    server = start_nginx(backend_ports[0], tmp_path_factory.mktemp("nginx"))
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


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list, output_json: dict
) -> None:
    """The run's conditions, for the report: tools, layout, and how busy the machine was."""
    other, ours, steal = FOREIGN.seconds()
    output_json["run"] = {
        "machine": f"{_cpu_model()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
        "tools": "; ".join(
            _first_line(argv)
            for argv in (["haproxy", "-v"], ["nginx", "-v"], ["iperf3", "--version"], ["wrk", "-v"])
        )
        + f"; Python {platform.python_version()}",
        "rounds": f"{REPS} per contender, interleaved (each case's run length: Durations)",
        "load average before": LOAD_BEFORE,
        "other work on the machine": f"{other:.0f} CPU-s next to the benchmarks' {ours:.0f} "
        f"(steal {steal:.0f} s): compare runs only when it is low",
    }


def pytest_benchmark_update_commit_info(config: pytest.Config, commit_info: dict) -> None:
    """Whether the tree was dirty when the run STARTED (the run itself rewrites the
    committed raw outputs, which pytest-benchmark's own check at the end would see)."""
    commit_info["dirty"] = DIRTY_AT_START


DIRTY_AT_START = bool(
    subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
)
LOAD_BEFORE = " ".join(Path("/proc/loadavg").read_text().split()[:3])
FOREIGN = ForeignCpu()


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return f"{argv[0]}: unavailable"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].split(" Copyright")[0].strip() if lines else f"{argv[0]}: unavailable"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"
