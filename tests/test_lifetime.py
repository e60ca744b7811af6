"""Connections the proxy ends on its own initiative (issue 23): MaxConnectionDuration,
with its jitter, from the workers' timer wheels (relay/lifetime.pxi)."""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from pathlib import Path

from fastproxy.backends import NamedEchoServer
from metricsutil import metric
from proxyproc import Proxy, app, free_ports


def opened(port: int) -> tuple[socket.socket, float]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    began = time.monotonic()
    line = b""
    while not line.endswith(b"\n"):
        line += sock.recv(1)
    return sock, began


def lifetimes(clients: list[tuple[socket.socket, float]], limit: float = 10) -> list[float]:
    """Seconds from each connect to the proxy's FIN, watched together; the first
    client talks all along."""
    ages: dict[socket.socket, float] = {}
    talker = clients[0][0]
    deadline = time.monotonic() + limit
    with selectors.DefaultSelector() as sel:
        for sock, began in clients:
            sel.register(sock, selectors.EVENT_READ, began)
        while len(ages) < len(clients) and time.monotonic() < deadline:
            if talker not in ages:
                with contextlib.suppress(OSError):  # closed under it: the read tells
                    talker.sendall(b"ping")
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:  # the talker's ping met the closed socket
                    data = b""
                if not data:
                    ages[sock] = time.monotonic() - key.data
                    sel.unregister(sock)
    assert len(ages) == len(clients), f"{len(clients) - len(ages)} connections still open"
    return [ages[sock] for sock, _ in clients]


def test_max_connection_duration_closes_old_connections_with_jitter(tmp_path: Path) -> None:
    server = NamedEchoServer("a")
    try:
        capped, free = free_ports(2)
        config = {
            "Workers": 2,
            "Apps": [
                app("capped", [capped], [f"127.0.0.1:{server.port}"], MaxConnectionDuration=3),
                app("free", [free], [f"127.0.0.1:{server.port}"]),
            ],
        }
        proxy = Proxy(tmp_path, config)
        clients = [opened(capped) for _ in range(20)]
        untouched, _ = opened(free)
        ages = lifetimes(clients)  # one talks all along: activity does not extend a lifetime
        print(f"closed after {min(ages):.2f} .. {max(ages):.2f} s (3 s + up to 10 %)")
        # Never before 3 s; by 3.3 s plus a tick and scheduling slack.
        assert all(3.0 <= age < 3.6 for age in ages), ages
        # The jitter spreads them over the 300 ms: not all in one tick.
        assert max(ages) - min(ages) > 0.1, ages
        assert metric(proxy, "fastproxy_closed_total", app="capped", reason="max-duration") == 20
        # The other app's connection is still there and works.
        untouched.sendall(b"still")
        assert untouched.recv(5) == b"still"
        assert metric(proxy, "fastproxy_closed_total", app="free", reason="max-duration") == 0
        untouched.close()
        assert proxy.stop() == 0
    finally:
        server.close()
