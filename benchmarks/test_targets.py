"""Targets that misbehave, behind the proxies that balance (the Python proxies relay to
one target only): an app of two targets, nginx and
- slow: a server answering each request 20 ms late (keep-alive load: the connections
  that land on it are slow for their whole life; how much does the fast half suffer?);
- dead: a port nothing listens on (one request per connection: each connection that
  picks it is refused and must be retried on nginx: the failover cost per connection,
  next to the same load with nginx alone in the churn case of test_http).
No active health checks, in every proxy: the failover is paid on every connection."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench_backends import start_slow
from bench_config import SECONDS, SMOKE
from bench_contenders import (
    BPF,
    OURS,
    PEERS,
    SMOKE_NAMES,
    Contenders,
    Unavailable,
    start_proxy,
)
from bench_procs import Pinned, free_ports
from bench_series import run_series
from bench_wrk import run_wrk, wrk_seconds

NAMES = [n for n in (*PEERS, *OURS) if n not in ("asyncio", "uvloop")]
if SMOKE:
    NAMES = [n for n in NAMES if n in SMOKE_NAMES]
SLOW_MS = 20
CASES = {"slow": (32, False), "dead": (32, True)}


@pytest.fixture(scope="module")
def balanced(
    backend_ports: tuple[int, int],
    nginx: None,
    contenders: Contenders,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, dict[str, tuple[int, int]]]]:
    """case -> contender -> (front port, pid): each proxy with an app of two targets."""
    contenders.stop(BPF)  # one bpf steering per network namespace
    slow_port, dead_port = free_ports(2)
    procs: list[Pinned] = [start_slow(slow_port, SLOW_MS, tmp_path_factory.mktemp("slow"))]
    running: dict[str, dict[str, tuple[int, int]]] = {case: {} for case in CASES}
    try:
        for name in NAMES:
            slow_front, dead_front = free_ports(2)
            routes = [
                (slow_front, [backend_ports[0], slow_port]),
                (dead_front, [dead_port, backend_ports[0]]),
            ]
            try:
                proxy = start_proxy(
                    name,
                    routes,
                    tmp_path_factory.mktemp(name),
                    connections=max(c for c, _ in CASES.values()),
                )
            except (Unavailable, FileNotFoundError):
                continue
            procs.append(proxy)
            running["slow"][name] = (slow_front, proxy.pid)
            running["dead"][name] = (dead_front, proxy.pid)
        yield running
    finally:
        for proc in procs:
            proc.stop()


@pytest.mark.parametrize("case", CASES)
def test_bad_target(request, balanced: dict[str, dict[str, tuple[int, int]]], case: str) -> None:
    connections, close = CASES[case]

    def measure(name: str) -> tuple[dict[str, float], str]:
        front, pid = balanced[case][name]
        return run_wrk(front, connections=connections, seconds=SECONDS, close=close, proxy_pid=pid)

    info = {"connections": connections, "load": "wrk", "seconds": wrk_seconds(SECONDS)}
    run_series(request, f"target-{case}", list(balanced[case]), measure, info=info)
