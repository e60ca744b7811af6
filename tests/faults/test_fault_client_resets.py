"""Clients that reset at random moments (before the proxy's connect to a target
completes, during failover, mid-stream, after their half-close) while targets are
out: one blackholed, one refusing. Nothing may stay open; clients that do not reset
get every byte back."""

from __future__ import annotations

import random
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import VARIANTS, needs_root
from faultkit import (
    Outcome,
    TargetProcess,
    assert_nothing_left_open,
    assert_serves,
    echo_client,
    open_state,
)
from faultnet import drop_syns, entered, namespace
from pattern import pattern
from proxyproc import Proxy, app, free_ports
from records import Tally
from servers import reset

CLIENTS = {"short": 2000, "long": 50_000}
KINDS = ("before-connect", "during-failover", "mid-stream", "after-half-close", "whole")


def resetting_client(port: int, kind: str, outcome: Outcome) -> None:
    if kind == "whole":
        echo_client(port, random.randint(1, 64 << 10), outcome)
        return
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        outcome.add("refused")
        return
    try:
        if kind == "during-failover":
            sock.sendall(b"x" * random.randint(0, 4096))
            time.sleep(random.uniform(0, 0.4))  # the blackholed target's connect timeout
        elif kind == "mid-stream":
            sock.sendall(pattern(random.getrandbits(32), 0, random.randint(1, 256 << 10)))
            sock.recv(random.randint(1, 65536))
        elif kind == "after-half-close":
            sock.sendall(b"y" * random.randint(1, 65536))
            sock.shutdown(socket.SHUT_WR)
            time.sleep(random.uniform(0, 0.05))
    except OSError:
        pass  # the proxy may have given up on a target already: a reset either way
    reset(sock)
    outcome.add(kind)


@needs_root
@pytest.mark.parametrize("variant", VARIANTS)
def test_clients_reset_at_random_moments_during_a_target_outage(
    tmp_path: Path, tally: Tally, variant: str
) -> None:
    with namespace() as ns:
        hole, good = TargetProcess("echo"), TargetProcess("echo")
        drop_syns(ns, hole.port)
        (refusing,) = free_ports(1)
        (port,) = free_ports(1)
        proxy = Proxy(
            tmp_path,
            {
                "Apps": [
                    app(
                        "resets",
                        [port],
                        [hole.address, f"127.0.0.1:{refusing}", good.address],
                        ConnectTimeout=0.3,
                        # Keep the dead targets in rotation: every client meets the outage.
                        HealthCheck={"Interval": 60, "Timeout": 1, "Rise": 1, "Fall": 1000},
                    )
                ]
            },
        )
        baseline = open_state(proxy)
        outcome = Outcome()
        todo = iter(range(CLIENTS[variant]))
        lock = threading.Lock()

        def worker() -> None:
            with entered(ns):
                while True:
                    with lock:
                        if next(todo, None) is None:
                            return
                    resetting_client(port, random.choice(KINDS), outcome)

        try:
            threads = [threading.Thread(target=worker) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            tally.count(outcome, ("corrupt", "hang", "refused", "cut"))
            tally.note(f"{dict(outcome)}")
            assert outcome["corrupt"] == outcome["hang"] == outcome["refused"] == 0, outcome
            assert outcome["cut"] == 0, f"a client that did not reset was cut: {outcome}"
            try:
                assert_nothing_left_open(proxy, baseline)
            except AssertionError:
                tally.failures += 1
                raise
            tally.count(assert_serves(port), ("corrupt", "hang", "refused", "cut"))
            assert proxy.stop() == 0
        finally:
            hole.close()
            good.close()
