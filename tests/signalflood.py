"""A flood of signals against a busy proxy, then proof that its main loop still turns
(SPEC §10: signals at any rate and at any moment never hang the process).

A Python signal handler runs on the main thread between two bytecodes, so it can run
while the main thread holds a lock (an Event's, on the way out of Event.wait); a handler
that then takes the same lock waits on its own thread for ever. This floods a busy proxy
with SIGHUP and SIGUSR1 from another process, at random moments, then checks that the
main loop still turns: a reload applies and SIGTERM stops it within its drain time.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fastproxy.backends import NamedEchoServer
from proxyproc import Proxy, app, free_ports, wait_for_port

# A second process that sends `count` signals, SIGHUP or SIGUSR1 at random, to `pid`,
# with random gaps (bursts of back-to-back signals among them).
SIGNALLER = """
import os, random, signal, sys, time
pid, count, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
for i in range(count):
    os.kill(pid, rng.choice((signal.SIGHUP, signal.SIGUSR1)))
    if rng.random() < 0.7:
        time.sleep(rng.random() * 0.002)
"""


class BusyThreads:
    """Keeps the proxy's Python threads busy: admin scrapes, and clients whose
    connections end in access-log lines (health checks run on their own)."""

    def __init__(self, proxy: Proxy, port: int) -> None:
        self.stop = threading.Event()
        self.exchanges = 0
        self.scrapes = 0
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._scrape, args=(proxy,)),
            *(threading.Thread(target=self._clients, args=(port,)) for _ in range(3)),
        ]
        for t in self.threads:
            t.start()

    def _scrape(self, proxy: Proxy) -> None:
        while not self.stop.is_set():
            for path in ("/metrics", "/status", "/healthz"):
                try:
                    proxy.http("GET", path)
                    self.scrapes += 1
                except OSError as exc:
                    self.errors.append(f"GET {path}: {exc!r}")

    def _clients(self, port: int) -> None:
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    assert sock.recv(100) == b"busy\n"
                    sock.sendall(b"ping")
                    assert sock.recv(100) == b"ping"
                self.exchanges += 1
            except (OSError, AssertionError) as exc:
                self.errors.append(f"client: {exc!r}")

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def flood_then_check(tmp_path: Path, signals: int, seed: int) -> int:
    """Returns the number of client exchanges that ran during the flood."""
    backend = NamedEchoServer("busy")
    later = NamedEchoServer("later")
    port, new_port = free_ports(2)
    health = {"Interval": 0.05, "Timeout": 0.04, "Rise": 1, "Fall": 1}
    config = {
        "Apps": [app("busy", [port], [backend.address], HealthCheck=health)],
        "AccessLog": str(tmp_path / "access.log"),
        "DrainTimeout": 3,
    }
    proxy = Proxy(tmp_path, config)
    busy = BusyThreads(proxy, port)
    try:
        flooder = subprocess.run(
            [sys.executable, "-c", SIGNALLER, str(proxy.pid), str(signals), str(seed)],
            timeout=120,
        )
        assert flooder.returncode == 0
    finally:
        busy.join()
    assert proxy.proc.poll() is None, proxy.log()
    assert busy.exchanges > 0 and busy.scrapes > 0, busy.errors[:5]
    assert not busy.errors, busy.errors[:5]

    # The main loop still turns: a SIGHUP applies a change the file watcher cannot see...
    config["Apps"].append(app("later", [new_port], [later.address]))
    proxy.write_config_unnoticed(config)
    proxy.proc.send_signal(signal.SIGHUP)
    try:
        wait_for_port(new_port, timeout=10)
    except OSError:
        pytest.fail(f"a SIGHUP after the flood applied nothing; log tail:\n{proxy.log()[-3000:]}")
    with socket.create_connection(("127.0.0.1", new_port), timeout=5) as sock:
        assert sock.recv(100) == b"later\n"
    # ...and SIGTERM stops it within its drain time (nothing is left open).
    proxy.proc.send_signal(signal.SIGTERM)
    try:
        assert proxy.proc.wait(config["DrainTimeout"] + 5) == 0
    except subprocess.TimeoutExpired:
        pytest.fail(f"SIGTERM did not stop the proxy; log tail:\n{proxy.log()[-3000:]}")
    # Every SIGUSR1 reopened the access log; nothing was lost by it.
    assert (tmp_path / "access.log").read_text().count("\n") >= busy.exchanges
    return busy.exchanges
