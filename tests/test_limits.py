"""Per-target MaxConnections (hard) and SoftLimit with Fly's semantics, in every
balancing mode, and QueueTimeout when every target is at its hard limit (issue 23).
Backends greet with their name, so every assertion is about who took a client."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from metricsutil import metric
from proxyproc import Proxy, app, free_ports
from servers import Backend

MODES = ("round-robin", "least-conn", "random", "source-hash", "maglev")


class Named:
    def __init__(self, name: str) -> None:
        self.name = name
        self.backend = Backend(self.handle)
        self.address = self.backend.address

    def handle(self, conn: socket.socket) -> None:
        conn.sendall(self.name.encode() + b"\n")
        while data := conn.recv(65536):
            conn.sendall(data)


@pytest.fixture
def named():
    started: list[Named] = []
    yield lambda *names: [started.append(Named(n)) or started[-1] for n in names]
    for server in started:
        server.backend.close()


def greeted(sock: socket.socket) -> str:
    """The backend's name, or "" when the proxy closed the client instead."""
    line = b""
    try:
        while not line.endswith(b"\n"):
            chunk = sock.recv(1)
            if not chunk:
                return ""
            line += chunk
    except ConnectionResetError:
        return ""
    return line.decode().strip()


def client(port: int, source: str = "127.0.0.1") -> tuple[socket.socket, str]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return sock, greeted(sock)


def settled_active(proxy: Proxy, limit: float = 5) -> dict[str, int]:
    """Every target's active count once nothing changes any more: 0 when every claim
    on a target's place was given back."""
    deadline = time.monotonic() + limit
    while True:
        active = {
            f"{a['name']} {t['address']}": t["active"]
            for a in proxy.status()["apps"]
            for t in a["targets"]
        }
        if not any(active.values()) or time.monotonic() > deadline:
            return active
        time.sleep(0.05)


def limited(server: Named, hard: int = 0, soft: int = 0) -> dict[str, object]:
    return {"Address": server.address, "MaxConnections": hard, "SoftLimit": soft}


def test_hard_limits_in_every_mode(tmp_path: Path, named) -> None:
    a, b = named("a", "b")
    ports = free_ports(len(MODES))
    targets = [limited(a, hard=2), limited(b, hard=3)]
    config = {
        "Workers": 2,
        "Apps": [app(m, [p], targets, Balance=m) for m, p in zip(MODES, ports)],
    }
    proxy = Proxy(tmp_path, config)
    for mode, port in zip(MODES, ports):
        held = [client(port) for _ in range(5)]
        assert Counter(name for _, name in held) == {"a": 2, "b": 3}, mode
        # Every target full, no QueueTimeout: the next client is closed at once.
        extra, name = client(port)
        assert name == "", (mode, name)
        assert metric(proxy, "fastproxy_rejected_total", app=mode, reason="saturated") == 1
        assert metric(proxy, "fastproxy_target_saturated_total", app=mode, target=a.address,
                      limit="hard") >= 1  # fmt: skip
        # A slot frees: the next client gets it.
        (freed,) = [s for s, name in held if name == "a"][:1]
        freed.close()
        deadline = time.monotonic() + 5
        while True:
            again, name = client(port)
            if name or time.monotonic() > deadline:
                break
            time.sleep(0.02)  # the proxy has not seen the close yet
        assert name == "a", mode
        for sock, _ in held:
            sock.close()
        again.close()
        extra.close()
    assert not any(settled_active(proxy).values()), settled_active(proxy)
    assert proxy.stop() == 0


def test_soft_limits_in_every_mode(tmp_path: Path, named) -> None:
    a, b = named("a", "b")
    ports = free_ports(len(MODES))
    targets = [limited(a, soft=1), limited(b, soft=3)]
    config = {
        "Workers": 2,
        "Apps": [app(m, [p], targets, Balance=m) for m, p in zip(MODES, ports)],
    }
    proxy = Proxy(tmp_path, config)
    for mode, port in zip(MODES, ports):
        # a at its soft limit gets no one while b is under its own, and the other way.
        held = [client(port) for _ in range(4)]
        assert Counter(name for _, name in held) == {"a": 1, "b": 3}, mode
        # Both at their soft limits: both take clients again (below any hard limit).
        more = [client(port, f"127.0.0.{i}") for i in range(2, 14)]  # for source-hash
        assert set(name for _, name in more) == {"a", "b"}, (mode, more)
        for sock, _ in held + more:
            sock.close()
    assert metric(proxy, "fastproxy_target_saturated_total", app="round-robin",
                  target=a.address, limit="soft") >= 1  # fmt: skip
    assert proxy.stop() == 0


def test_queue_timeout(tmp_path: Path, named) -> None:
    (a,) = named("a")
    (port,) = free_ports(1)
    config = {"Apps": [app("q", [port], [limited(a, hard=1)], QueueTimeout=1)]}
    proxy = Proxy(tmp_path, config)
    first, name = client(port)
    assert name == "a"
    # The second waits; once the first leaves, it is served.
    waiting = socket.create_connection(("127.0.0.1", port), timeout=10)
    got: list[tuple[float, str]] = []
    began = time.monotonic()

    def read() -> None:
        name = greeted(waiting)
        got.append((time.monotonic() - began, name))

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.5)
    first.close()
    reader.join(10)
    waited, name = got[0]
    assert name == "a" and 0.45 < waited < 1.2, got  # never served: "" at QueueTimeout
    # The third waits QueueTimeout for the second, which stays, and is closed.
    began = time.monotonic()
    third, name = client(port)
    waited = time.monotonic() - began
    assert name == "" and 0.95 < waited < 1.6, (name, waited)
    assert metric(proxy, "fastproxy_queued_total", app="q") == 2
    assert metric(proxy, "fastproxy_rejected_total", app="q", reason="saturated") == 1
    waiting.close()
    third.close()
    assert not any(settled_active(proxy).values()), settled_active(proxy)
    assert proxy.stop() == 0


def test_limit_config_errors() -> None:
    from fastproxy.config import ConfigError, parse_config

    def error(target: dict[str, object]) -> str:
        with pytest.raises(ConfigError) as info:
            parse_config({"Apps": [app("a", [1], [{"Address": "127.0.0.1:2", **target}])]})
        return str(info.value)

    assert "Targets[0].SoftLimit: 5 is above MaxConnections (3)" in error(
        {"MaxConnections": 3, "SoftLimit": 5}
    )
    assert "Targets[0].MaxConnections: must be between 0" in error({"MaxConnections": -1})
    with pytest.raises(ConfigError, match="QueueTimeout: must be >= 0"):
        parse_config({"Apps": [app("a", [1], ["127.0.0.1:2"], QueueTimeout=-1)]})
