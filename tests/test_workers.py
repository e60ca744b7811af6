"""Clients spread over the relay's workers: the kernel wakes one worker per arrival,
and the one that wakes to a burst would take all of it; it hands clients on to a
less loaded worker (relay/handoff.pxi)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from fastproxy import _relay, netns
from fastproxy.backends import NamedEchoServer
from proxyproc import Proxy, app, free_ports


def open_burst(port: int, count: int) -> list[socket.socket]:
    """`count` connections opened at once (non-blocking connects, then waited for)."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    for s in socks:
        s.setblocking(True)
        s.settimeout(10)
        s.recv(64)  # the backend's name line: the connection is relayed
    return socks


@pytest.mark.parametrize("steering", ["ports", "bpf"])
def test_a_burst_of_clients_is_spread_over_the_workers(tmp_path: Path, steering: str) -> None:
    if steering == "bpf":
        if os.geteuid() != 0:
            pytest.skip("bpf steering needs root")
        # Its own netns (this thread's, inherited by the proxy): a fresh steering state.
        with netns.temporary("fpworkers"):
            burst_is_spread(tmp_path, steering)
    else:
        burst_is_spread(tmp_path, steering)


def burst_is_spread(tmp_path: Path, steering: str) -> None:
    server = NamedEchoServer("a")
    (port,) = free_ports(1)
    config = {
        "Workers": 2,
        "Steering": steering,
        "Apps": [app("burst", [port], [f"127.0.0.1:{server.port}"])],
    }
    proxy = Proxy(tmp_path, config)
    try:
        for _ in range(3):
            socks = open_burst(port, 64)
            per_worker = proxy.status()["worker_connections"]
            assert sum(per_worker) == 64, per_worker
            # Without the hand-off one worker took nearly all of them.
            assert min(per_worker) >= 16, per_worker
            for s in socks:
                s.close()
            deadline = time.monotonic() + 10
            while proxy.status()["connections"] and time.monotonic() < deadline:
                time.sleep(0.02)
        assert proxy.stop() == 0
    finally:
        server.close()


def test_handed_over_clients_carry_their_bytes(tmp_path: Path) -> None:
    """Clients handed from one worker to another relay every byte both ways."""
    server = NamedEchoServer("a")
    (port,) = free_ports(1)
    config = {"Workers": 2, "Apps": [app("burst", [port], [f"127.0.0.1:{server.port}"])]}
    proxy = Proxy(tmp_path, config)
    socks = open_burst(port, 32)
    assert min(proxy.status()["worker_connections"]) >= 8
    payload = os.urandom(1 << 20)
    results: list[bool] = []

    def exchange(s: socket.socket) -> None:
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        got = hashlib.sha256()
        left = len(payload)
        while left:
            chunk = s.recv(min(left, 1 << 16))
            if not chunk:
                break
            got.update(chunk)
            left -= len(chunk)
        sender.join()
        results.append(got.digest() == hashlib.sha256(payload).digest())

    threads = [threading.Thread(target=exchange, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [True] * len(socks)
    for s in socks:
        s.close()
    assert proxy.stop() == 0
    server.close()


def one_app_one_port(relay: _relay.Relay, server: NamedEchoServer) -> tuple[socket.socket, int]:
    """Route a new listening socket's port to `server` (the caller adds the listener)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    port = listener.getsockname()[1]
    target = (socket.AF_INET, "127.0.0.1", server.port, 1, _relay.TARGET_UP, 1, False)
    relay.set_app(0, app_slot=0, targets=[target])
    relay.set_port(port, 0)
    return listener, port


@pytest.mark.parametrize("handoff", [False, True])
def test_a_listener_of_one_worker_and_the_handoff_switch(handoff: bool) -> None:
    """The relay API that benchmarks/spread.py compares layouts with: a listener given to
    one worker is accepted on by that worker alone, which keeps every client unless the
    hand-off passes some on."""
    server = NamedEchoServer("one")
    relay = _relay.Relay(workers=2, handoff=handoff)
    listener, port = one_app_one_port(relay, server)
    with pytest.raises(ValueError, match="no worker 2"):
        relay.add_listener(listener.fileno(), port, worker=2)
    relay.add_listener(listener.fileno(), port, worker=1)
    relay.start()
    try:
        socks = open_burst(port, 40)
        deadline = time.monotonic() + 10
        while sum(per_worker := relay.worker_connections()) != 40:
            assert time.monotonic() < deadline, per_worker
            time.sleep(0.01)
        if handoff:
            assert min(per_worker) >= 15, per_worker
        else:
            assert per_worker == [0, 40], per_worker
        for s in socks:
            s.close()
    finally:
        relay.remove_listener(listener.fileno())
        listener.close()
        relay.stop()
        server.close()


def test_clients_still_in_an_inbox_at_stop_are_reset() -> None:
    """A client handed to a worker that stops before taking it is closed with a reset
    by stop(), not left open for ever. Hand-driven: worker 0 runs from this thread and
    worker 1 never runs, so the third client stays in worker 1's inbox."""
    server = NamedEchoServer("kept")
    relay = _relay.Relay(workers=2)
    listener, port = one_app_one_port(relay, server)
    relay.add_listener(listener.fileno(), port)
    try:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        deadline = time.monotonic() + 5
        while relay.worker_connections() != [2, 0] or _relay.harness_inbox(relay) != [0, 1]:
            assert time.monotonic() < deadline, (
                relay.worker_connections(),
                _relay.harness_inbox(relay),
            )
            _relay.harness_step(relay, 10)
        for client in clients[:2]:  # worker 0 relays its two
            client.setblocking(False)
        deadline = time.monotonic() + 5
        greeted = 0
        while greeted < 2:
            assert time.monotonic() < deadline, "worker 0 did not relay its clients"
            _relay.harness_step(relay, 10)
            for client in clients[:2]:
                with contextlib.suppress(BlockingIOError):
                    greeted += client.recv(64) == b"kept\n"
        relay.stop()
        with pytest.raises(ConnectionResetError):
            clients[2].recv(64)
        for client in clients:
            client.close()
    finally:
        relay.remove_listener(listener.fileno())
        listener.close()
        server.close()
