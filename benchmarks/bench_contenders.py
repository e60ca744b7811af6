"""The contenders: the direct connection and the proxies, each started pinned to the
server's CPU on free loopback ports. Every proxy has three front ports, one per kind of
backend: the iperf3 server (its own), nginx, and the idle-connection holder (shared).

Environment: FASTPROXY_BENCH_SECONDS (per transfer or load run, default 2) and
FASTPROXY_BENCH_REPS (repetitions per figure, default 3)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench_procs import HOST, IDLE_CONNECTIONS, SERVER_CPU, Pinned, accepts, free_ports

SECONDS = float(os.environ.get("FASTPROXY_BENCH_SECONDS", "2"))
REPS = int(os.environ.get("FASTPROXY_BENCH_REPS", "3"))
# One relay thread: the proxy has one CPU (shared with the server), as HAProxy has with
# nbthread 1 and the Python proxies with their one event loop.
WORKERS = 1
HERE = Path(__file__).resolve().parent

DIRECT = "direct"
HAPROXY = "haproxy-splice"
BPF = "fastproxy-splice-bpf"
# Table order: the limit, the reference, the others, then ours.
CONTENDERS = (
    DIRECT,
    HAPROXY,
    "haproxy-nosplice",
    "asyncio",
    "uvloop",
    "fastproxy-copy",
    "fastproxy-splice",  # ports steering: one listening socket per port
    BPF,  # one socket for all ports, sk_lookup steering
)
PROXIES = CONTENDERS[1:]


@dataclass(frozen=True)
class Contender:
    name: str
    port: int  # where the client connects for the iperf3 server
    backend_port: int  # where that iperf3 server listens
    http_port: int  # where the client connects for nginx
    hold_port: int  # where the client connects for the idle-connection holder
    pid: int | None  # the proxy's, None for the direct connection


class Contenders:
    """Each contender started on first use and kept for the session, so that the
    repetitions of all contenders can take turns: a drift in the machine's speed (a
    neighbour's load) then spreads over every contender instead of skewing one. A
    contender that cannot start is skipped, with its reason, for the rest of the run."""

    def __init__(self, workdir: Path, http_port: int, hold_port: int) -> None:
        self.workdir = workdir
        self.http_port = http_port
        self.hold_port = hold_port
        self._running: dict[str, Contender] = {}
        self._proxies: dict[str, Pinned] = {}
        self._unavailable: dict[str, str] = {}
        self._starts = 0

    def get(self, name: str) -> Contender:
        if name in self._unavailable:
            pytest.skip(self._unavailable[name])
        if name not in self._running:
            try:
                self._running[name] = self._start(name)
            except Unavailable as exc:
                self._unavailable[name] = f"{name}: {exc}"
                pytest.skip(self._unavailable[name])
        return self._running[name]

    def _start(self, name: str) -> Contender:
        port, backend_port, http_front, hold_front = free_ports(4)
        if name == DIRECT:
            return Contender(name, backend_port, backend_port, self.http_port, self.hold_port, None)
        self._starts += 1
        workdir = self.workdir / f"{name}-{self._starts}"
        workdir.mkdir()
        routes = [(port, backend_port), (http_front, self.http_port), (hold_front, self.hold_port)]
        proxy = start_proxy(name, routes, workdir)
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


class Unavailable(Exception):
    """A contender that cannot run here (a tool missing, bpf not loadable)."""


Route = tuple[int, int]  # (front port, backend port)


def start_proxy(name: str, routes: list[Route], workdir: Path) -> Pinned:
    """Start proxy contender `name`, relaying each route's front port to its backend
    port on HOST; it accepts on every front port when this returns."""
    if name.startswith("haproxy"):
        proxy = start_haproxy(routes, workdir, splice=name == HAPROXY)
    elif name in ("asyncio", "uvloop"):
        proxy = _start_pyproxy(routes, workdir, uvloop=name == "uvloop")
    else:
        relay = "copy" if name == "fastproxy-copy" else "splice"
        steering = "bpf" if name == BPF else "ports"
        proxy = _start_fastproxy(routes, relay, steering, workdir)
    try:
        for front, _ in routes:
            if name == BPF:  # no socket listens by that port number: probe it
                proxy.wait_until(lambda p=front: accepts(p), f"connections on port {front}")
            else:
                proxy.wait_listening(front)
    except BaseException:
        proxy.stop()
        raise
    return proxy


def fastproxy_config(apps: dict[str, tuple[list[int | str], int]], steering: str) -> dict:
    """A config with one app per entry: name -> (ports, backend port on HOST)."""
    return {
        "Apps": [
            {
                "Name": app,
                "Ports": ports,
                "Targets": [f"{HOST}:{backend}"],
                # No active checks during the run: a probe connection would be taken by
                # `iperf3 -s -1` as its one client (the first check of a target comes at
                # a random point within one interval).
                "HealthCheck": {"Interval": 86400},
            }
            for app, (ports, backend) in apps.items()
        ],
        "Listen": HOST,
        "Admin": f"{HOST}:0",
        "Steering": steering,
        "Workers": WORKERS,
    }


def start_fastproxy(config: dict, workdir: Path, *extra: str) -> Pinned:
    """fastproxy serving `config` from workdir/fastproxy.json, pinned to the server's
    CPU; returns once it logged "serving". Unavailable when it exits instead (bpf
    steering that cannot load)."""
    path = workdir / "fastproxy.json"
    path.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "fastproxy", "serve", str(path), *extra]
    argv += ["--control-socket", str(workdir / "control.sock")]
    proxy = Pinned(argv, SERVER_CPU, workdir / "fastproxy.log")
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


def _start_fastproxy(routes: list[Route], relay: str, steering: str, workdir: Path) -> Pinned:
    apps = {f"app{i}": ([front], backend) for i, (front, backend) in enumerate(routes)}
    return start_fastproxy(fastproxy_config(apps, steering), workdir, "--relay", relay)


HAPROXY_CONFIG = """\
global
    nbthread 1
    # the idle connections and a few more; HAProxy needs 2 fds per connection and 2 per
    # pipe, within the open-file limit
    maxconn {maxconn}
    maxpipes 64

defaults
    mode tcp
{splice}    timeout connect 5s
    timeout client 60s
    timeout server 60s
"""
HAPROXY_SPLICE = "    option splice-request\n    option splice-response\n"
HAPROXY_LISTEN = """
listen route{i}
    bind {host}:{front}
    server backend {host}:{backend}
"""


def start_haproxy(
    routes: list[tuple[int | str, int]],
    workdir: Path,
    *,
    splice: bool = True,
    maxconn: int = IDLE_CONNECTIONS + 50,
) -> Pinned:
    """HAProxy with one `listen` per route (a front may be a range: "10000-19999")."""
    if shutil.which("haproxy") is None:
        raise Unavailable("haproxy not installed (scripts/install-bench-deps.sh)")
    text = HAPROXY_CONFIG.format(maxconn=maxconn, splice=HAPROXY_SPLICE if splice else "")
    for i, (front, backend) in enumerate(routes):
        text += HAPROXY_LISTEN.format(i=i, host=HOST, front=front, backend=backend)
    path = workdir / "haproxy.cfg"
    path.write_text(text)
    # -db: foreground, no master process; the pid is the one process doing the work.
    return Pinned(["haproxy", "-db", "-f", str(path)], SERVER_CPU, workdir / "haproxy.log")


def _start_pyproxy(routes: list[Route], workdir: Path, *, uvloop: bool) -> Pinned:
    if uvloop:
        try:
            import uvloop as _  # noqa: F401 - only whether it is there
        except ImportError:
            raise Unavailable("uvloop not installed (scripts/install-bench-deps.sh)") from None
    argv = [sys.executable, str(HERE / "pyproxy.py")]
    argv += [str(port) for route in routes for port in route]
    argv += ["--uvloop"] if uvloop else []
    proxy = Pinned(argv, SERVER_CPU, workdir / "pyproxy.log")
    proxy.wait_until(lambda: "serving" in proxy.log(), "'serving' line")
    return proxy
