"""The contenders: the direct connection and the proxies, each started pinned to the
server's CPU on free loopback ports.

Environment: FASTPROXY_BENCH_SECONDS (per transfer, default 3) and FASTPROXY_BENCH_REPS
(repetitions per figure, default 5)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench_procs import HOST, SERVER_CPU, Pinned, free_ports

SECONDS = float(os.environ.get("FASTPROXY_BENCH_SECONDS", "3"))
REPS = int(os.environ.get("FASTPROXY_BENCH_REPS", "5"))
# One relay thread: the proxy has one CPU (shared with the server), as HAProxy has with
# nbthread 1.
WORKERS = 1

DIRECT = "direct"
HAPROXY = "haproxy-splice"
# Table order: the limit, the reference, then ours.
CONTENDERS = (DIRECT, HAPROXY, "fastproxy-splice", "fastproxy-copy")


@dataclass(frozen=True)
class Contender:
    name: str
    port: int  # where the client connects
    backend_port: int  # where the iperf3 server listens
    pid: int | None  # the proxy's, None for the direct connection


class Contenders:
    """Each contender started on first use and kept for the session, so that the
    repetitions of all contenders can take turns: a drift in the machine's speed (a
    neighbour's load) then spreads over every contender instead of skewing one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._running: dict[str, Contender] = {}
        self._proxies: list[Pinned] = []

    def get(self, name: str) -> Contender:
        if name not in self._running:
            self._running[name] = self._start(name)
        return self._running[name]

    def _start(self, name: str) -> Contender:
        port, backend_port = free_ports(2)
        if name == DIRECT:
            return Contender(name, backend_port, backend_port, None)
        if name == HAPROXY and shutil.which("haproxy") is None:
            pytest.skip("haproxy not installed (scripts/install-bench-deps.sh)")
        workdir = self.workdir / name
        workdir.mkdir()
        proxy = _start_proxy(name, port, backend_port, workdir)
        self._proxies.append(proxy)
        return Contender(name, port, backend_port, proxy.pid)

    def stop(self) -> None:
        for proxy in self._proxies:
            proxy.stop()


def _start_proxy(name: str, port: int, backend_port: int, workdir: Path) -> Pinned:
    """Start proxy contender `name` on `port` in front of `backend_port`; it listens
    when this returns."""
    if name == HAPROXY:
        return _start_haproxy(port, backend_port, workdir)
    relay = name.removeprefix("fastproxy-")
    return _start_fastproxy(port, backend_port, relay, workdir)


def _start_fastproxy(port: int, backend_port: int, relay: str, workdir: Path) -> Pinned:
    config = {
        "Apps": [
            {
                "Name": "bench",
                "Ports": [port],
                "Targets": [f"{HOST}:{backend_port}"],
                # No active checks during the run: a probe connection would be taken by
                # `iperf3 -s -1` as its one client (the first check of a target comes at
                # a random point within one interval).
                "HealthCheck": {"Interval": 86400},
            }
        ],
        "Listen": HOST,
        "Admin": f"{HOST}:0",
    }
    path = workdir / "fastproxy.json"
    path.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "fastproxy", "serve", str(path), "--relay", relay]
    argv += ["--workers", str(WORKERS), "--steering", "ports"]
    proxy = Pinned(argv, SERVER_CPU, workdir / "fastproxy.log")
    try:
        proxy.wait_until(lambda: "serving" in proxy.log(), "'serving' line")
        proxy.wait_listening(port)
    except BaseException:
        proxy.stop()
        raise
    return proxy


HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 1000

defaults
    mode tcp
    option splice-request
    option splice-response
    timeout connect 5s
    timeout client 60s
    timeout server 60s

listen bench
    bind {host}:{port}
    server backend {host}:{backend_port}
"""


def _start_haproxy(port: int, backend_port: int, workdir: Path) -> Pinned:
    path = workdir / "haproxy.cfg"
    path.write_text(HAPROXY_CONFIG.format(host=HOST, port=port, backend_port=backend_port))
    # -db: foreground, no master process; the pid is the one process doing the work.
    proxy = Pinned(["haproxy", "-db", "-f", str(path)], SERVER_CPU, workdir / "haproxy.log")
    try:
        proxy.wait_listening(port)
    except BaseException:
        proxy.stop()
        raise
    return proxy
