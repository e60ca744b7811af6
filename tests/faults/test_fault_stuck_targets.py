"""Targets that do not answer: a blackholed one (its SYNs dropped, so a connect
neither succeeds nor is refused) and one that accepts but never reads."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import VARIANTS, needs_root
from faultkit import (
    Load,
    Outcome,
    TargetProcess,
    assert_nothing_left_open,
    assert_serves,
    open_state,
)
from faultnet import drop_syns, namespace
from proxyproc import Proxy, app, free_ports
from records import Tally
from servers import reset

FAILED = ("corrupt", "hang", "refused", "cut")


QUICK = {"ConnectTimeout": 0.5, "HealthCheck": {"Interval": 2, "Timeout": 0.3}}


@needs_root
@pytest.mark.parametrize("variant", VARIANTS)
def test_blackholed_target(tmp_path: Path, tally: Tally, variant: str) -> None:
    seconds, dead_clients = {"short": (5, 20), "long": (60, 200)}[variant]
    with namespace() as ns:
        hole, good = TargetProcess("echo"), TargetProcess("echo")
        drop_syns(ns, hole.port)
        mixed, dead = free_ports(2)
        proxy = Proxy(
            tmp_path,
            {
                # Short check timeouts: probes of the blackholed target, each in flight
                # for its whole timeout, must leave moments with none (see
                # assert_nothing_left_open), or two apps' probes would cover every moment.
                "Apps": [
                    app("mixed", [mixed], [hole.address, good.address], **QUICK),
                    app("dead", [dead], [hole.address], **QUICK),
                ]
            },
        )
        baseline = open_state(proxy)
        try:
            # Every client of the app with a good target is served (after a connect
            # timeout, until health checks take the blackholed target out).
            load = Load(mixed, threads=4, sizes=(1, 64 << 10), ns=ns)
            time.sleep(seconds)
            outcome = load.stop()
            tally.count(outcome, FAILED)
            assert outcome["ok"] > 0 and outcome["ok"] == outcome.total() - outcome["bytes"], (
                outcome
            )
            # Clients of the app with only the blackholed target are closed promptly.
            closed = Outcome()
            took: list[float] = []

            def doomed() -> None:
                started = time.monotonic()
                with socket.create_connection(("127.0.0.1", dead), timeout=20) as sock:
                    try:
                        data = sock.recv(100)
                    except ConnectionResetError:
                        data = b""
                except_time = time.monotonic() - started
                took.append(except_time)
                closed.add("closed" if data == b"" else "corrupt")

            threads = [threading.Thread(target=doomed) for _ in range(dead_clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            tally.count(closed, ("corrupt",))
            assert closed["closed"] == dead_clients, closed
            assert max(took) < 5, f"a client waited {max(took):.1f}s for a 0.5s connect timeout"
            tally.note(
                f"mixed app: {dict(outcome)}; {dead_clients} clients of the dead app closed"
                f" within {max(took):.2f}s"
            )
            assert_nothing_left_open(proxy, baseline)
            tally.count(assert_serves(mixed), FAILED)
            assert proxy.stop() == 0
        finally:
            hole.close()
            good.close()


def fill_until_blocked(sock: socket.socket) -> int:
    """Send until nothing moves any more (the target is not reading); bytes sent."""
    sock.setblocking(False)
    sent, stalled_since = 0, None
    chunk = b"x" * 65536
    while True:
        try:
            sent += sock.send(chunk)
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 0.5:
                return sent
            time.sleep(0.01)


def test_target_never_reads_and_the_client_resets(tmp_path: Path, tally: Tally) -> None:
    deaf, live = TargetProcess("noread"), TargetProcess("echo")
    port, live_port = free_ports(2)
    apps = [
        app("deaf", [port], [deaf.address], IdleTimeout=600),
        app("live", [live_port], [live.address]),  # shows the proxy still serves
    ]
    proxy = Proxy(tmp_path, {"Apps": apps})
    baseline = open_state(proxy)
    try:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        blocked = sum(fill_until_blocked(sock) for sock in clients)
        tally.note(f"4 clients blocked after {blocked >> 20} MiB, then reset")
        assert open_state(proxy)["connections"] == 4
        for sock in clients:
            reset(sock)
        tally.connections += 4
        try:
            assert_nothing_left_open(proxy, baseline, wait=10)
        except AssertionError:
            tally.failures += 4
            raise
        # Still serving: new clients of the other app get every byte back, and a new
        # client of the deaf target is taken and connected to it.
        tally.count(assert_serves(live_port), FAILED)
        newcomer = socket.create_connection(("127.0.0.1", port), timeout=5)
        deadline = time.monotonic() + 5
        while proxy.status()["apps"][0]["targets"][0]["active"] != 1:
            assert time.monotonic() < deadline, "a new client of the deaf target was not served"
            time.sleep(0.05)
        reset(newcomer)
        assert_nothing_left_open(proxy, baseline, wait=10)
        assert proxy.stop() == 0
    finally:
        deaf.close()
        live.close()


def test_target_never_reads_idle_timeout_closes_both(tmp_path: Path, tally: Tally) -> None:
    deaf = TargetProcess("noread")
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("deaf", [port], [deaf.address], IdleTimeout=3)]})
    baseline = open_state(proxy)
    try:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        for sock in clients:
            fill_until_blocked(sock)
        tally.connections += 4
        assert_nothing_left_open(proxy, baseline, wait=10)  # the idle timeout ended them
        for sock in clients:
            sock.setblocking(True)
            sock.settimeout(5)
            with pytest.raises(ConnectionResetError):  # cut, not a clean end
                while sock.recv(65536):
                    pass
            sock.close()
        assert proxy.stop() == 0
    finally:
        deaf.close()
