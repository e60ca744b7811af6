"""Many ports, the case fastproxy's bpf steering is for (one socket serves every port)
against 10,000 listening sockets: fastproxy in ports mode, HAProxy (a bind on the port
range) and nginx `stream` (a `listen` per port), on ports 10000-19999:
- ports-startup: start-up time and memory (the process's RSS, the kernel's slab objects)
  with 10,000 ports;
- ports-spread: the request rate with every request on a new connection to the next
  port in turn (benchmarks/portspread.c), so that every port carries traffic;
- reload-adding-ports: a reload adding 1,000 ports while that load runs over the 10,000:
  the errors it causes and the time until the new ports accept. fastproxy: `POST
  /reload`; HAProxy: its seamless reload (a new process taking the listeners over the
  stats socket, `-x`, the old one finishing its connections, `-sf`); nginx: HUP to its
  master (which opens the new ports and starts a new worker; the old one finishes).

Start-up in bpf mode is measured with the compiled program cached (`fastproxy-bpf`, the
case of every start after the first on a machine: each round checks that it loaded from
the cache) and without the cache (`fastproxy-bpf-cold`, FASTPROXY_BPF_CACHE=off: bcc
compiles at every start, as the very first start does).

Open files: each process gets the machine's hard limit (bench_procs.FD_LIMIT, 20,000
here): 11,000 listeners and the case's connections fit in every contender (an nginx
worker counts each listener as one of its worker_connections, sized so).

Only one fastproxy may own the bpf steering of a network namespace: the contender in bpf
mode is stopped first (it starts again when a later benchmark uses it)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

from bench_config import SECONDS, SMOKE
from bench_contenders import BPF, Contenders, fastproxy_config, start_fastproxy
from bench_peers import (
    Route,
    haproxy_config,
    nginx_many_ports_config,
    start_haproxy,
    start_nginx_many_ports,
)
from bench_portspread import Background, run_portspread
from bench_procs import SERVER_CPU, Pinned, accepts, rss_bytes, slab_object_bytes
from bench_series import run_series

PORTS = 1_000 if SMOKE else 10_000
FIRST_PORT = 10_000  # 10000-19999: below the ephemeral range (32768-)
RELOAD_PORTS = 100 if SMOKE else 1_000
# The ports a reload adds, per contender (all below the ephemeral range).
RELOAD_FIRST = {"fastproxy-ports": 20_000, "fastproxy-bpf": 22_000, "haproxy": 24_000}
RELOAD_FIRST["nginx-stream"] = 26_000
SAMPLE = 20
SPREAD_SECONDS = SECONDS  # the rate case's counted run (5 s: a p99 is reported)
# The load around a reload runs on until this long after the new ports accept (however
# long the reload took: nginx parses 11,000 `listen` lines in seconds).
AFTER_RELOAD = 0.2 if SMOKE else 1.0
BEFORE_RELOAD = 0.3 if SMOKE else 1.0  # the load running before the reload starts
# The spread load's connections at once: each a new connection per request, as wrk's 32
# in the other connection-rate cases, and enough to keep a proxy's one CPU busy.
SPREAD_CONNECTIONS = 32
SPREAD_FIGURES = ("rate", "errors", "p50_us", "p99_us", "ports_hit", "client_cpu_share")
SPREAD_FIGURES += ("proxy_cpu_us_per_req", "shared_cpu_us_per_req")
VARIANTS = ("fastproxy-ports", "fastproxy-bpf", "fastproxy-bpf-cold", "haproxy", "nginx-stream")
SERVING = ("fastproxy-ports", "fastproxy-bpf", "haproxy", "nginx-stream")
CACHE_OFF = {"FASTPROXY_BPF_CACHE": "off"}


def wait_accepting(proxy: Pinned, ports: list[int], timeout: float = 60) -> None:
    """Until each of `ports` has accepted a connection once."""
    waiting = list(ports)

    def done() -> bool:
        waiting[:] = [port for port in waiting if not accepts(port)]
        return not waiting

    proxy.wait_until(done, f"connections on ports {waiting[:3]}...", timeout, poll=0.001)


def _variants(contenders: Contenders, variants: tuple[str, ...]) -> list[str]:
    """Those that run here: bpf only where the bpf contender could start (then stopped:
    the steering of a network namespace has one owner)."""
    usable = [v for v in variants if "-bpf" not in v or contenders.runs(BPF)]
    contenders.stop(BPF)
    return usable


def settled_slab(timeout: float = 3) -> int:
    """slab_object_bytes() once the kernel has finished freeing what a process stopped
    before held (sockets and files are freed after RCU grace periods and deferred
    work): two readings 100 ms apart within 64 KiB of each other."""
    before = slab_object_bytes()
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(0.1)
        now = slab_object_bytes()
        if abs(now - before) < 64 * 1024 or time.monotonic() > deadline:
            return now
        before = now


def _sample(last: int, seed: str) -> list[int]:
    """The first and last port and SAMPLE - 2 between: probed until they accept."""
    return [last, FIRST_PORT, *random.Random(seed).sample(range(FIRST_PORT + 1, last), SAMPLE - 2)]


class Starter:
    """Starts each contender on FIRST_PORT..FIRST_PORT+PORTS-1 relayed to the backend, in
    a fresh work directory per start."""

    def __init__(self, tmp_path: Path, backend: int) -> None:
        self.tmp_path = tmp_path
        self.backend = backend
        self.starts = iter(range(1_000_000))

    def workdir(self, variant: str) -> Path:
        path = self.tmp_path / f"{variant}-{next(self.starts)}"
        path.mkdir()
        return path

    def start(self, variant: str, *, connections: int, reloadable: bool = False) -> Pinned:
        """`connections`: the most the case holds at once (the peers' limits);
        `reloadable`: HAProxy with its stats socket, nginx with a master process."""
        workdir = self.workdir(variant)
        last = FIRST_PORT + PORTS - 1
        if variant == "haproxy":
            routes: list[Route] = [(f"{FIRST_PORT}-{last}", [self.backend])]
            if reloadable:  # its stats socket, for the seamless reload
                path = workdir / "haproxy.cfg"
                stats = str(workdir / "stats.sock")
                path.write_text(
                    haproxy_config("haproxy-nosplice", routes, connections=connections, stats=stats)
                )
                argv = ["haproxy", "-db", "-f", str(path)]
                return Pinned(argv, SERVER_CPU, workdir / "haproxy-0.log")
            return start_haproxy("haproxy-nosplice", routes, workdir, connections=connections)
        if variant == "nginx-stream":
            ports = range(FIRST_PORT, last + 1)
            return start_nginx_many_ports(
                ports, self.backend, workdir, connections=connections, master=reloadable
            )
        steering = "ports" if variant == "fastproxy-ports" else "bpf"
        config = fastproxy_config({"many": ([f"{FIRST_PORT}-{last}"], [self.backend])}, steering)
        return start_fastproxy(config, workdir, env=CACHE_OFF if "cold" in variant else None)


def test_startup_many_ports(
    request, contenders: Contenders, backend_ports: tuple[int, int], tmp_path: Path
) -> None:
    """Start-up: from the start of the process until SAMPLE ports (the first, the last
    and some between) accept; memory: the RSS of the process serving them then (nginx
    without a master: one process doing the work, as the others), and the kernel's slab
    objects it added meanwhile (its listening sockets, files, epoll entries: what RSS
    does not show; machine-wide, so other work on the machine blurs it)."""
    names = _variants(contenders, VARIANTS)
    last = FIRST_PORT + PORTS - 1
    starter = Starter(tmp_path, backend_ports[0])

    def start(variant: str) -> Pinned:
        # The case's connections are its probes, one at a time (SAMPLE ports): a small
        # connection limit leaves room for the listening sockets within the fd limit.
        return starter.start(variant, connections=SAMPLE)

    if "fastproxy-bpf" in names:
        start("fastproxy-bpf").stop()  # the program compiled and cached (if it was not yet)

    def measure(variant: str) -> tuple[dict[str, float], str]:
        slab = settled_slab()
        started = time.monotonic()
        proxy = start(variant)
        try:
            wait_accepting(proxy, _sample(last, variant))
            elapsed = time.monotonic() - started
            rss = rss_bytes(proxy.pid)
            slab = slab_object_bytes() - slab
        finally:
            proxy.stop()
        log = proxy.log()
        if variant == "fastproxy-bpf":
            assert "loaded from the cache" in log, f"not a warm start: {log[-2000:]}"
        # Machine-wide: where a contender adds next to nothing (bpf steering), other work
        # freeing memory meanwhile can read a little below 0; kept as read, not hidden.
        figures = {
            "startup_ms": elapsed * 1e3,
            "rss_mib": rss / 2**20,
            "kernel_slab_mib": slab / 2**20,
        }
        return figures, log[-2000:]

    info = {"ports": PORTS, "bpf_cache": {"fastproxy-bpf": "warm", "fastproxy-bpf-cold": "off"}}
    run_series(request, "ports-startup", names, measure, info=info)


def test_rate_spread_over_ports(
    request, contenders: Contenders, nginx: None, backend_ports: tuple[int, int], tmp_path: Path
) -> None:
    """Per round: a fresh contender on PORTS ports, then SPREAD_SECONDS of portspread:
    SPREAD_CONNECTIONS at once, each request (`Connection: close`) on a new connection to
    the next port in turn. ports_hit says how many ports answered: the load was spread
    over all of them, not concentrated (a figure, not an assertion: a peer that fails
    some ports shows it there and in its errors)."""
    names = _variants(contenders, SERVING)
    last = FIRST_PORT + PORTS - 1
    starter = Starter(tmp_path, backend_ports[0])

    def measure(variant: str) -> tuple[dict[str, float], str]:
        proxy = starter.start(variant, connections=SPREAD_CONNECTIONS)
        try:
            wait_accepting(proxy, _sample(last, variant))
            figures, out = run_portspread(
                FIRST_PORT,
                PORTS,
                connections=SPREAD_CONNECTIONS,
                seconds=SPREAD_SECONDS,
                proxy_pid=proxy.pid,
            )
        finally:
            proxy.stop()
        return {k: figures[k] for k in SPREAD_FIGURES if k in figures}, out

    info = {
        "ports": PORTS,
        "connections": SPREAD_CONNECTIONS,
        "load": "portspread (a new connection per request, round robin over the ports)",
        "seconds": SPREAD_SECONDS,
    }
    run_series(request, "ports-spread", names, measure, info=info)


def _post_reload(admin: str, token_file: Path, answered: list[float]) -> None:
    """POST /reload; the time of the answer appended to `answered`."""
    token = token_file.read_text().strip()
    request = urllib.request.Request(
        f"http://{admin}/reload", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
    answered.append(time.monotonic())


def _reload(variant: str, proxy: Pinned, added: list[int], backend: int) -> list:
    """Start the reload that adds the ports `added` to `proxy`; returns what to wait for
    and stop afterwards: threads (fastproxy's POST, its time of answer in `.answered`) and
    processes (HAProxy's new one)."""
    if variant.startswith("fastproxy"):
        path = proxy.log_path.with_name("fastproxy.json")
        config = json.loads(path.read_text())
        config["Apps"].append(
            {**config["Apps"][0], "Name": "added", "Ports": [f"{added[0]}-{added[-1]}"]}
        )
        path.write_text(json.dumps(config))
        admin = re.search(r"admin=([0-9.]+:[0-9]+)", proxy.log())
        assert admin, proxy.log()
        token = proxy.log_path.with_name("admin-token")
        answered: list[float] = []
        post = threading.Thread(target=_post_reload, args=(admin.group(1), token, answered))
        post.answered = answered  # type: ignore[attr-defined]
        post.start()
        return [post]
    last = FIRST_PORT + PORTS - 1
    workdir = proxy.log_path.parent
    if variant == "haproxy":
        routes: list[Route] = [
            (f"{FIRST_PORT}-{last}", [backend]),
            (f"{added[0]}-{added[-1]}", [backend]),
        ]
        path = workdir / "haproxy-1.cfg"
        stats = str(workdir / "stats.sock")
        path.write_text(
            haproxy_config("haproxy-nosplice", routes, connections=SPREAD_CONNECTIONS, stats=stats)
        )
        argv = ["haproxy", "-db", "-f", str(path), "-x", stats, "-sf", str(proxy.pid)]
        return [Pinned(argv, SERVER_CPU, workdir / "haproxy-1.log")]
    ports = [*range(FIRST_PORT, last + 1), *added]
    (workdir / "nginx-stream.conf").write_text(
        nginx_many_ports_config(
            ports, backend, workdir, connections=SPREAD_CONNECTIONS, master=True
        )
    )
    os.kill(proxy.pid, signal.SIGHUP)
    return []


def test_reload_adding_ports(
    request, contenders: Contenders, nginx: None, backend_ports: tuple[int, int], tmp_path: Path
) -> None:
    """Per round: a fresh contender on PORTS ports under the spread load (portspread over
    all of them, from BEFORE_RELOAD before the reload until AFTER_RELOAD after the new
    ports accept), a reload of a config with RELOAD_PORTS more. Figures: the load's
    errors (every one counts: a refused connect, a reset, a short answer), the time until
    the last new port accepts, how many of the new ports accept afterwards, and for
    fastproxy the time until `POST /reload` answered."""
    names = _variants(contenders, SERVING)
    last = FIRST_PORT + PORTS - 1
    backend = backend_ports[0]
    starter = Starter(tmp_path, backend)

    def measure(variant: str) -> tuple[dict[str, float], str]:
        proxy = starter.start(variant, connections=SPREAD_CONNECTIONS, reloadable=True)
        procs = [proxy]
        added = list(range(RELOAD_FIRST[variant], RELOAD_FIRST[variant] + RELOAD_PORTS))
        figures: dict[str, float] = {}
        load = None
        try:
            wait_accepting(proxy, _sample(last, variant))
            load = Background(FIRST_PORT, PORTS, connections=SPREAD_CONNECTIONS)
            time.sleep(BEFORE_RELOAD)
            started = time.monotonic()
            waits = _reload(variant, proxy, added, backend)
            procs += [w for w in waits if isinstance(w, Pinned)]
            wait_accepting(procs[-1], [added[-1]], timeout=30)
            figures["accepting_ms"] = (time.monotonic() - started) * 1e3
            for thread in waits:
                if isinstance(thread, threading.Thread):
                    thread.join(30)
                    figures["request_ms"] = (thread.answered[0] - started) * 1e3  # type: ignore[attr-defined]
            figures["new_ports_accepting"] = sum(accepts(port) for port in added)
            time.sleep(AFTER_RELOAD)  # an old process finishing its connections: still loaded
            done, out = load.stop()
        finally:
            if load is not None and load.proc.poll() is None:
                load.stop()
            for proc in reversed(procs):
                proc.stop()
        figures.update({"load_rate": done["rate"], "errors": done["errors"]})
        return figures, out

    info = {
        "ports": PORTS,
        "added": RELOAD_PORTS,
        "connections": SPREAD_CONNECTIONS,
        "load": f"portspread over the ports kept, from {BEFORE_RELOAD:g} s before the reload until"
        f" {AFTER_RELOAD:g} s after the new ports accepted",
    }
    run_series(request, "reload-adding-ports", names, measure, info=info)
