"""Reload and upgrade under load, next to HAProxy's seamless reload: while wrk opens
connections (`Connection: close`, 32 at a time) through the proxy for 5 s, one second in
- fastproxy-reload: `POST /reload` (same config);
- fastproxy-upgrade: a second fastproxy started with --takeover, which takes the
  listening sockets over the control socket; the old one drains and exits;
- haproxy-reload: a new HAProxy started with `-x` (the stats socket, `expose-fd
  listeners`: it takes the listening sockets) and `-sf` (the old one finishes its
  connections and exits): HAProxy's seamless reload.
Figures: connections failed (wrk's errors), p99 and max latency over the run."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from pathlib import Path

from bench_config import SMOKE
from bench_contenders import Contenders, fastproxy_config, start_fastproxy
from bench_peers import Route, haproxy_config
from bench_procs import SERVER_CPU, Pinned, free_ports
from bench_series import run_series
from bench_wrk import parse, wrk_argv

VARIANTS = ("haproxy-reload", "fastproxy-reload", "fastproxy-upgrade")
RUN_SECONDS = 2 if SMOKE else 5  # its p99 is reported: 5 s at least
CONNECTIONS = 32  # wrk's, each request on a new connection


def _haproxy(workdir: Path, front: int, backend: int, *previous: str) -> Pinned:
    path = workdir / "haproxy.cfg"
    stats = workdir / "stats.sock"
    routes: list[Route] = [(front, [backend])]
    path.write_text(
        haproxy_config("haproxy-splice-auto", routes, connections=CONNECTIONS, stats=str(stats))
    )
    argv = ["haproxy", "-db", "-f", str(path), *previous]
    return Pinned(argv, SERVER_CPU, workdir / f"haproxy-{len(previous)}.log")


def _change(variant: str, workdir: Path, first: Pinned, front: int, backend: int) -> Pinned:
    """Reload or upgrade `first`; returns the process serving afterwards."""
    if variant == "haproxy-reload":
        stats = str(workdir / "stats.sock")
        second = _haproxy(workdir, front, backend, "-x", stats, "-sf", str(first.pid))
        # The new process took the listeners and told the old one to stop: it says so.
        first.wait_until(lambda: "stopped" in first.log(), "old HAProxy stopping")
        return second
    if variant == "fastproxy-reload":
        admin = re.search(r"admin=([0-9.]+:[0-9]+)", first.log())
        assert admin, first.log()
        token = first.log_path.with_name("admin-token").read_text().strip()
        request = urllib.request.Request(
            f"http://{admin.group(1)}/reload",
            method="POST",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
        return first
    config = fastproxy_config({"app": ([front], [backend])}, "ports")
    successor = workdir / "successor"
    successor.mkdir()
    (successor / "control.sock").symlink_to(workdir / "control.sock")
    return start_fastproxy(config, successor, "--takeover")


def test_reload_under_load(
    request, contenders: Contenders, nginx: None, backend_ports: tuple[int, int], tmp_path: Path
) -> None:
    starts = iter(range(1_000_000))

    def measure(variant: str) -> tuple[dict[str, float], str]:
        workdir = tmp_path / f"{variant}-{next(starts)}"
        workdir.mkdir()
        (front,) = free_ports(1)
        backend = backend_ports[0]
        if variant.startswith("haproxy"):
            first = _haproxy(workdir, front, backend)
        else:
            first = start_fastproxy(
                fastproxy_config({"app": ([front], [backend])}, "ports"), workdir
            )
        first.wait_listening(front)
        procs = [first]
        load = subprocess.Popen(
            wrk_argv(front, connections=CONNECTIONS, seconds=RUN_SECONDS, close=True),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            time.sleep(1)
            started = time.monotonic()
            procs.append(_change(variant, workdir, first, front, backend))
            took = time.monotonic() - started
            out, _ = load.communicate(timeout=RUN_SECONDS + 30)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
            for proc in procs:
                proc.stop()
        figures = parse(out)
        return {
            "errors": figures["errors"],
            "p99_us": figures["p99_us"],
            "max_us": figures["max_us"],
            "rate": figures["rate"],
            "change_ms": took * 1e3,
        }, out

    info = {"connections": CONNECTIONS, "load": "wrk", "seconds": RUN_SECONDS}
    run_series(request, "reload-under-load", list(VARIANTS), measure, info=info)
