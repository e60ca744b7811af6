"""Many ports: start-up time and memory with 10,000 ports (fastproxy in ports mode and in
bpf mode, HAProxy with a bind on the same range), and the time a reload adding 1,000
ports takes to have them accept while a connection load runs (fastproxy only).

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

import pytest

from bench_contenders import (
    BPF,
    REPS,
    Contenders,
    Unavailable,
    fastproxy_config,
    start_fastproxy,
    start_haproxy,
)
from bench_figures import CONNECT_CONCURRENCY, PORTS, RELOAD_PORTS
from bench_procs import Pinned, accepts, rss_bytes
from bench_report import Figure
from bench_wrk import parse, wrk_argv

FIRST_PORT = 10_000  # 10000-19999: below the ephemeral range (32768-)
RELOAD_FIRST = 20_000  # the ports a reload adds: 20000-20999
SAMPLE = 20
VARIANTS = ("fastproxy-ports", "fastproxy-bpf", "haproxy")


def wait_accepting(proxy: Pinned, ports: list[int], timeout: float = 60) -> None:
    """Until each of `ports` has accepted a connection once."""
    waiting = list(ports)

    def done() -> bool:
        waiting[:] = [port for port in waiting if not accepts(port)]
        return not waiting

    proxy.wait_until(done, f"connections on ports {waiting[:3]}...", timeout, poll=0.001)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rep", range(REPS), ids=lambda i: f"rep{i}")
def test_startup_10k_ports(
    contenders: Contenders,
    figures: dict[str, Figure],
    nginx: None,
    variant: str,
    rep: int,
    tmp_path: Path,
) -> None:
    contenders.stop(BPF)
    last = FIRST_PORT + PORTS - 1
    between = random.Random(rep).sample(range(FIRST_PORT + 1, last), SAMPLE - 2)
    sample = [last, FIRST_PORT, *between]
    ports = f"{FIRST_PORT}-{last}"
    started = time.monotonic()
    try:
        if variant == "haproxy":
            # maxconn leaves room for 10,000 listening sockets within the open-file limit
            proxy = start_haproxy([(ports, contenders.http_port)], tmp_path, maxconn=1000)
        else:
            steering = variant.removeprefix("fastproxy-")
            config = fastproxy_config({"many": ([ports], contenders.http_port)}, steering)
            proxy = start_fastproxy(config, tmp_path)
    except Unavailable as exc:
        pytest.skip(f"{variant}: {exc}")
    try:
        wait_accepting(proxy, sample)
        elapsed = time.monotonic() - started
        rss = rss_bytes(proxy.pid)
    finally:
        proxy.stop()
    figure = figures["ports"]
    figure.column("start-up ms").add(variant, elapsed * 1e3)
    figure.column("RSS MiB").add(variant, rss / 2**20)


def _admin(proxy: Pinned) -> str:
    found = re.search(r"admin=([0-9.]+:[0-9]+)", proxy.log())
    assert found, proxy.log()
    return found.group(1)


def _reload(admin: str, answered: list[float] | None = None) -> None:
    """POST /reload; the time of the answer appended to `answered`."""
    request = urllib.request.Request(f"http://{admin}/reload", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
    if answered is not None:
        answered.append(time.monotonic())


@pytest.mark.parametrize("steering", ["ports", "bpf"])
def test_reload_under_load(
    contenders: Contenders,
    figures: dict[str, Figure],
    nginx: None,
    steering: str,
    tmp_path: Path,
) -> None:
    contenders.stop(BPF)
    name = f"fastproxy-{steering}"
    front = FIRST_PORT  # kept in both configs
    base = fastproxy_config({"kept": ([front], contenders.http_port)}, steering)
    added_ports = list(range(RELOAD_FIRST, RELOAD_FIRST + RELOAD_PORTS))
    bigger = json.loads(json.dumps(base))
    bigger["Apps"].append(
        {**base["Apps"][0], "Name": "added", "Ports": [f"{added_ports[0]}-{added_ports[-1]}"]}
    )
    try:
        proxy = start_fastproxy(base, tmp_path)
    except Unavailable as exc:
        pytest.skip(f"{name}: {exc}")
    path = tmp_path / "fastproxy.json"
    # Per repetition: reload to the base config, let the file watcher see it, reload to
    # the bigger one (timed), check every new port.
    duration = REPS * 3 + 2
    load = subprocess.Popen(
        wrk_argv(front, connections=CONNECT_CONCURRENCY, seconds=duration, close=True),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    figure = figures["reload"]
    try:
        admin = _admin(proxy)
        time.sleep(0.5)  # the load is running
        for _ in range(REPS):
            path.write_text(json.dumps(base))
            _reload(admin)
            time.sleep(1)  # the watcher's own reload of that change is done
            path.write_text(json.dumps(bigger))
            started = time.monotonic()
            answered: list[float] = []
            request = threading.Thread(target=_reload, args=(admin, answered))
            request.start()
            wait_accepting(proxy, [added_ports[-1]], timeout=10)
            accepting = time.monotonic()
            request.join(30)
            figure.column("request ms").add(name, (answered[0] - started) * 1e3)
            figure.column("accepting ms").add(name, (accepting - started) * 1e3)
            figure.column("new ports accepting").add(
                name, sum(accepts(port) for port in added_ports)
            )
        out, _ = load.communicate(timeout=duration + 30)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
        proxy.stop()
    done = parse(out, None)
    figure.column("load conn/s").add(name, done.rate)
    figure.column("errors").add(name, done.errors)
