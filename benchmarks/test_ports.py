"""Many ports: start-up time and memory with 10,000 ports (fastproxy in ports mode and in
bpf mode, HAProxy with a bind on the same range), and the time a reload adding 1,000
ports takes to have them accept while a connection load runs (fastproxy only).

Start-up in bpf mode is measured with the compiled program cached (`fastproxy-bpf`, the
case of every start after the first on a machine: each round checks that it loaded from
the cache) and without the cache (`fastproxy-bpf-cold`, FASTPROXY_BPF_CACHE=off: bcc
compiles at every start, as the very first start does).

Only one fastproxy may own the bpf steering of a network namespace: the contender in bpf
mode is stopped first (it starts again when a later benchmark uses it)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from bench_config import SMOKE
from bench_contenders import BPF, Contenders, fastproxy_config, start_fastproxy
from bench_peers import start_haproxy
from bench_procs import Pinned, accepts, rss_bytes
from bench_series import run_series
from bench_wrk import parse, wrk_argv

PORTS = 1_000 if SMOKE else 10_000
FIRST_PORT = 10_000  # 10000-19999: below the ephemeral range (32768-)
RELOAD_PORTS = 100 if SMOKE else 1_000
RELOAD_FIRST = {"ports": 20_000, "bpf": 22_000}  # the ports a reload adds, per variant
SAMPLE = 20
RELOAD_LOAD_SECONDS = 2 if SMOKE else 3  # the load around a reload: no percentile reported
VARIANTS = ("fastproxy-ports", "fastproxy-bpf", "fastproxy-bpf-cold", "haproxy")
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


def test_startup_many_ports(
    request, contenders: Contenders, backend_ports: tuple[int, int], tmp_path: Path
) -> None:
    names = _variants(contenders, VARIANTS)
    last = FIRST_PORT + PORTS - 1
    ports = f"{FIRST_PORT}-{last}"
    starts = iter(range(1_000_000))

    def start(variant: str) -> Pinned:
        workdir = tmp_path / f"{variant}-{next(starts)}"
        workdir.mkdir()
        if variant == "haproxy":
            # The case's connections are its probes, one at a time (SAMPLE ports): a
            # small maxconn leaves room for the listening sockets within the fd limit.
            routes = [(ports, [backend_ports[0]])]
            return start_haproxy("haproxy-nosplice", routes, workdir, connections=SAMPLE)
        steering = "ports" if variant == "fastproxy-ports" else "bpf"
        config = fastproxy_config({"many": ([ports], [backend_ports[0]])}, steering)
        return start_fastproxy(config, workdir, env=CACHE_OFF if "cold" in variant else None)

    if "fastproxy-bpf" in names:
        start("fastproxy-bpf").stop()  # the program compiled and cached (if it was not yet)

    def measure(variant: str) -> tuple[dict[str, float], str]:
        between = random.Random(variant).sample(range(FIRST_PORT + 1, last), SAMPLE - 2)
        started = time.monotonic()
        proxy = start(variant)
        try:
            wait_accepting(proxy, [last, FIRST_PORT, *between])
            elapsed = time.monotonic() - started
            rss = rss_bytes(proxy.pid)
        finally:
            proxy.stop()
        log = proxy.log()
        if variant == "fastproxy-bpf":
            assert "loaded from the cache" in log, f"not a warm start: {log[-2000:]}"
        return {"startup_ms": elapsed * 1e3, "rss_mib": rss / 2**20}, log[-2000:]

    info = {"ports": PORTS, "bpf_cache": {"fastproxy-bpf": "warm", "fastproxy-bpf-cold": "off"}}
    run_series(request, "ports-startup", names, measure, info=info)


def _reload(admin: str, token_file: Path, answered: list[float] | None = None) -> None:
    """POST /reload; the time of the answer appended to `answered`."""
    token = token_file.read_text().strip()
    request = urllib.request.Request(
        f"http://{admin}/reload", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
    if answered is not None:
        answered.append(time.monotonic())


def test_reload_adding_ports(
    request, contenders: Contenders, nginx: None, backend_ports: tuple[int, int], tmp_path: Path
) -> None:
    """Per round: a fresh proxy under a connection load (wrk, `Connection: close`) to a
    port kept in both configs, then `POST /reload` of a config with RELOAD_PORTS more."""
    names = _variants(contenders, ("fastproxy-ports", "fastproxy-bpf"))
    front = FIRST_PORT
    starts = iter(range(1_000_000))

    def start(variant: str) -> Pinned:
        workdir = tmp_path / f"{variant}-{next(starts)}"
        workdir.mkdir()
        steering = variant[10:]
        return start_fastproxy(
            fastproxy_config({"kept": ([front], [backend_ports[0]])}, steering), workdir
        )

    def measure(variant: str) -> tuple[dict[str, float], str]:
        proxy = start(variant)
        steering = variant[10:]
        added = list(range(RELOAD_FIRST[steering], RELOAD_FIRST[steering] + RELOAD_PORTS))
        config = json.loads(proxy.log_path.with_name("fastproxy.json").read_text())
        config["Apps"].append(
            {**config["Apps"][0], "Name": "added", "Ports": [f"{added[0]}-{added[-1]}"]}
        )
        load = subprocess.Popen(
            wrk_argv(front, connections=32, seconds=RELOAD_LOAD_SECONDS, close=True),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            admin = re.search(r"admin=([0-9.]+:[0-9]+)", proxy.log()).group(1)  # type: ignore[union-attr]
            time.sleep(1)  # the load is running
            proxy.log_path.with_name("fastproxy.json").write_text(json.dumps(config))
            started = time.monotonic()
            answered: list[float] = []
            token_file = proxy.log_path.with_name("admin-token")
            reload = threading.Thread(target=_reload, args=(admin, token_file, answered))
            reload.start()
            wait_accepting(proxy, [added[-1]], timeout=10)
            accepting = time.monotonic()
            reload.join(30)
            accepted = sum(accepts(port) for port in added)
            out, _ = load.communicate(timeout=60)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
            proxy.stop()
        done = parse(out)
        return {
            "request_ms": (answered[0] - started) * 1e3,
            "accepting_ms": (accepting - started) * 1e3,
            "new_ports_accepting": accepted,
            "load_rate": done["rate"],
            "errors": done["errors"],
        }, out

    info = {"ports": RELOAD_PORTS, "load": "wrk", "seconds": RELOAD_LOAD_SECONDS}
    run_series(request, "reload-adding-ports", names, measure, info=info)
