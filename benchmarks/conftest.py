"""Fixtures for the benchmarks: the backends and the contenders, started once for the
session. The figures go to pytest-benchmark's JSON (--benchmark-json); RESULTS.md and
the chart are made from it by benchmarks/report.py."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from bench_backends import Holder, start_nginx
from bench_contenders import Contenders
from bench_procs import CLIENT_CPU, SERVER_CPU, free_ports


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
