"""Scaling from one relay thread to two: fastproxy --workers 1 and 2, HAProxy nbthread 1
and 2, each proxy allowed both CPUs (the client stays on its CPU, nginx on the other;
with two cores the proxy's second thread competes with them, so this shows what a
second thread buys here, not on a bigger machine: beyond two, more cores are needed).
How evenly the connections spread over the threads shows as the busiest relay thread's
share of the relay threads' CPU time (0.5 is even with two; fastproxy's workers are
the threads named fp-worker-N, each listener in every worker with EPOLLEXCLUSIVE;
HAProxy's are all its threads)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench_config import SECONDS
from bench_contenders import Unavailable, start_proxy
from bench_procs import CLIENT_CPU, SERVER_CPU, Pinned, free_ports
from bench_series import run_series
from bench_wrk import run_wrk, wrk_seconds

# label -> (contender, threads)
VARIANTS = {
    "haproxy-splice-auto-1t": ("haproxy-splice-auto", 1),
    "haproxy-splice-auto-2t": ("haproxy-splice-auto", 2),
    "fastproxy-splice-1w": ("fastproxy-splice", 1),
    "fastproxy-splice-2w": ("fastproxy-splice", 2),
}
LOADS = {"keepalive": (32, False), "churn": (32, True)}


@pytest.fixture(scope="module")
def scaled(
    backend_ports: tuple[int, int], nginx: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[int, int]]]:
    """label -> (front port, pid), each proxy on both CPUs."""
    running: dict[str, tuple[int, int]] = {}
    procs: list[Pinned] = []
    try:
        for label, (name, threads) in VARIANTS.items():
            (front,) = free_ports(1)
            workdir = tmp_path_factory.mktemp(label)
            try:
                proxy = start_proxy(
                    name,
                    [(front, [backend_ports[0]])],
                    workdir,
                    connections=max(c for c, _ in LOADS.values()),
                    workers=threads,
                    cpus=f"{CLIENT_CPU},{SERVER_CPU}",
                )
            except (Unavailable, FileNotFoundError):
                continue
            procs.append(proxy)
            running[label] = (front, proxy.pid)
        yield running
    finally:
        for proxy in procs:
            proxy.stop()


def relay_thread_cpu(pid: int) -> dict[int, int]:
    """Clock ticks of CPU per relay thread: fastproxy's fp-worker-N threads, or every
    thread of a process that has none of them (HAProxy)."""
    ticks: dict[int, tuple[str, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended meanwhile
        ticks[int(task.name)] = (name, int(fields[11]) + int(fields[12]))
    workers = {tid: t for tid, (name, t) in ticks.items() if name.startswith("fp-worker-")}
    return workers or {tid: t for tid, (_, t) in ticks.items()}


@pytest.mark.parametrize("load", LOADS)
def test_workers(request, scaled: dict[str, tuple[int, int]], load: str, tmp_path: Path) -> None:
    connections, close = LOADS[load]

    def measure(label: str) -> tuple[dict[str, float], str]:
        front, pid = scaled[label]
        before = relay_thread_cpu(pid)
        figures, out = run_wrk(
            front, connections=connections, seconds=SECONDS, close=close, proxy_pid=pid
        )
        after = relay_thread_cpu(pid)
        spent = [after[tid] - before.get(tid, 0) for tid in after]
        figures["busiest_thread_share"] = max(spent) / max(sum(spent), 1)
        return figures, out

    info = {"connections": connections, "load": "wrk", "seconds": wrk_seconds(SECONDS)}
    run_series(request, f"workers-{load}", list(scaled), measure, info=info)
