"""The contenders: the direct connection and the proxies, each started pinned to the
server's CPU on free loopback ports. Every proxy has three front ports, one per kind of
backend: the iperf3 server (its own), nginx, and the idle-connection holder (shared)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench_config import CONCURRENT, HERE, ONLY, SMOKE
from bench_peers import HAPROXY_MODES, Route, start_haproxy, start_nginx_stream
from bench_procs import HOST, IDLE_CONNECTIONS, SERVER_CPU, Pinned, accepts, free_ports

DIRECT = "direct"
BPF = "fastproxy-splice-bpf"
PEERS = (*HAPROXY_MODES, "nginx-stream", "asyncio", "uvloop")
OURS = ("fastproxy-copy", "fastproxy-splice", BPF)
# Table order: the limit, the peers, then ours.
CONTENDERS = (DIRECT, *PEERS, *OURS)
PROXIES = CONTENDERS[1:]
# A smoke run (bench_config.SMOKE) runs every contender in the bulk case, and these three
# in the others: whether each benchmark produces a figure, in about a minute.
PIPE_SIZE = int(os.environ.get("BENCH_PIPE_SIZE", 262144))
SMOKE_NAMES = (DIRECT, "haproxy-splice-auto", "fastproxy-splice")
# The most connections a case holds at once through the contenders started here (shared
# by every case): the concurrent HTTP case's or the idle-memory case's. The peers' limits
# are set above it (bench_peers.connection_limit).
SHARED_CONNECTIONS = max(CONCURRENT, IDLE_CONNECTIONS)


@dataclass(frozen=True)
class Contender:
    name: str
    port: int  # where the client connects for the iperf3 server
    backend_port: int  # where that iperf3 server listens
    http_port: int  # where the client connects for nginx
    hold_port: int  # where the client connects for the idle-connection holder
    pid: int | None  # the proxy's, None for the direct connection


class Unavailable(Exception):
    """A contender that cannot run here (a tool missing, bpf not loadable)."""


class Contenders:
    """Each contender started on first use and kept for the session, so that the
    repetitions of all contenders can take turns. A contender that cannot start is
    left out, with its reason, for the rest of the run."""

    def __init__(self, workdir: Path, http_port: int, hold_port: int) -> None:
        self.workdir = workdir
        self.http_port = http_port
        self.hold_port = hold_port
        self._running: dict[str, Contender] = {}
        self._proxies: dict[str, Pinned] = {}
        self.unavailable: dict[str, str] = {}
        self._starts = 0

    def available(self, names: tuple[str, ...] | list[str], *, every: bool = False) -> list[str]:
        """Those of `names` that run here, each started (skips if none does). A smoke
        run keeps only SMOKE_NAMES of them, unless `every`."""
        started = []
        for name in names:
            if SMOKE and not every and name not in SMOKE_NAMES:
                continue
            if ONLY and name not in ONLY:
                continue
            if name in self.unavailable:
                continue
            if name not in self._running:
                try:
                    self._running[name] = self._start(name)
                except (Unavailable, FileNotFoundError) as exc:
                    self.unavailable[name] = str(exc)
                    continue
            started.append(name)
        if not started:
            pytest.skip(f"none of {names} runs here: {self.unavailable}")
        return started

    def runs(self, name: str) -> bool:
        """Whether `name` can run here (started to find out, if it never was)."""
        if name not in self.unavailable and name not in self._running:
            try:
                self._running[name] = self._start(name)
            except (Unavailable, FileNotFoundError) as exc:
                self.unavailable[name] = str(exc)
        return name not in self.unavailable

    def get(self, name: str) -> Contender:
        return self._running[name]

    def _start(self, name: str) -> Contender:
        port, backend_port, http_front, hold_front = free_ports(4)
        if name == DIRECT:
            return Contender(name, backend_port, backend_port, self.http_port, self.hold_port, None)
        self._starts += 1
        workdir = self.workdir / f"{name}-{self._starts}"
        workdir.mkdir()
        routes: list[Route] = [
            (port, [backend_port]),
            (http_front, [self.http_port]),
            (hold_front, [self.hold_port]),
        ]
        proxy = start_proxy(name, routes, workdir, connections=SHARED_CONNECTIONS)
        self._proxies[name] = proxy
        return Contender(name, port, backend_port, http_front, hold_front, proxy.pid)

    def stop(self, name: str) -> None:
        """Stop one contender (it starts again on its next use)."""
        self._running.pop(name, None)
        proxy = self._proxies.pop(name, None)
        if proxy is not None:
            proxy.stop()

    def stop_all(self) -> None:
        for name in list(self._proxies):
            self.stop(name)


def start_proxy(
    name: str,
    routes: list[Route],
    workdir: Path,
    *,
    connections: int,
    workers: int = 1,
    cpus: str = "",
) -> Pinned:
    """Start proxy contender `name`, relaying each route's front port to its backend
    ports on HOST, with `workers` threads on `cpus` (default: the server's CPU), its
    connection limits above `connections` (the most the case holds at once);
    it accepts on every front port when this returns."""
    cpus = cpus or str(SERVER_CPU)
    if name in HAPROXY_MODES:
        proxy = start_haproxy(
            name, routes, workdir, connections=connections, threads=workers, cpus=cpus
        )
    elif name == "nginx-stream":
        proxy = start_nginx_stream(routes, workdir, connections=connections, cpus=cpus)
    elif name in ("asyncio", "uvloop"):
        proxy = _start_pyproxy(routes, workdir, uvloop=name == "uvloop")
    else:
        relay = "copy" if name == "fastproxy-copy" else "splice"
        steering = "bpf" if name == BPF else "ports"
        apps = {f"app{i}": ([front], backends) for i, (front, backends) in enumerate(routes)}
        config = fastproxy_config(apps, steering, workers=workers)
        proxy = start_fastproxy(config, workdir, "--relay", relay, cpus=cpus)
    try:
        for front, _ in routes:
            if name == BPF:  # no socket listens by that port number: probe it
                proxy.wait_until(lambda p=front: accepts(p), f"connections on port {front}")
            else:
                proxy.wait_listening(int(front))
    except BaseException:
        proxy.stop()
        raise
    return proxy


def fastproxy_config(
    apps: dict[str, tuple[list[int | str], list[int]]], steering: str, *, workers: int = 1
) -> dict:
    """A config with one app per entry: name -> (ports, backend ports on HOST)."""
    return {
        "Apps": [
            {
                "Name": app,
                "Ports": ports,
                "Targets": [f"{HOST}:{backend}" for backend in backends],
                # No active checks during the run: a probe connection would be taken by
                # `iperf3 -s -1` as its one client.
                "HealthCheck": {"Interval": 86400},
            }
            for app, (ports, backends) in apps.items()
        ],
        "Listen": HOST,
        "Admin": f"{HOST}:0",
        "Steering": steering,
        "Workers": workers,
        # Bigger pipes move more per splice() (HAProxy's tune.pipesize is the same).
        "PipeSize": PIPE_SIZE,
    }


def start_fastproxy(
    config: dict, workdir: Path, *extra: str, cpus: str = "", env: dict[str, str] | None = None
) -> Pinned:
    """fastproxy serving `config` from workdir/fastproxy.json (`env` added to the
    environment); returns once it logged "serving". Unavailable when it exits instead
    (bpf steering that cannot load)."""
    path = workdir / "fastproxy.json"
    # The admin token beside it (admin POSTs read it from there), not in /run.
    path.write_text(json.dumps({"AdminTokenFile": str(workdir / "admin-token"), **config}))
    argv = [sys.executable, "-m", "fastproxy", "serve", str(path), *extra]
    argv += ["--control-socket", str(workdir / "control.sock")]
    proxy = Pinned(argv, cpus or str(SERVER_CPU), workdir / "fastproxy.log", env)
    try:
        proxy.wait_until(lambda: "serving" in proxy.log(), "'serving' line", timeout=60)
    except RuntimeError as exc:  # it exited
        proxy.stop()
        lines = str(exc).strip().splitlines()
        raise Unavailable(lines[-1] if lines else str(exc)) from None
    except BaseException:
        proxy.stop()
        raise
    return proxy


def _start_pyproxy(routes: list[Route], workdir: Path, *, uvloop: bool) -> Pinned:
    if uvloop:
        try:
            import uvloop as _  # noqa: F401 - only whether it is there
        except ImportError:
            raise Unavailable("uvloop not installed (scripts/install-bench-deps.sh)") from None
    argv = [sys.executable, str(HERE / "pyproxy.py")]
    argv += [str(port) for front, backends in routes for port in (front, backends[0])]
    argv += ["--uvloop"] if uvloop else []
    proxy = Pinned(argv, SERVER_CPU, workdir / "pyproxy.log")
    proxy.wait_until(lambda: "serving" in proxy.log(), "'serving' line")
    return proxy
