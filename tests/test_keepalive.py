"""TcpKeepalive and TcpUserTimeout (issue 23): a peer that goes silent mid-connection
(a NAT that forgot it, a dead link) is found in seconds, not at IdleTimeout.

Each test runs the proxy and a backend in a fresh network namespace and blackholes one
established connection with an nftables rule dropping what one peer sends on that
4-tuple: the peer is still there, it just stops answering. Health checks (new
connections) are unaffected, so only the options can notice."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastproxy import netns
from proxyproc import Proxy, app, free_ports
from servers import Backend

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "nft"], capture_output=True).returncode != 0,
    reason="needs nft to blackhole a connection",
)

# No IdleTimeout could explain an end within the bound: an hour.
BOUND = 8.0


@pytest.fixture
def namespace() -> Iterator[str]:
    with netns.temporary("fpka") as name:
        yield name


def blackhole(sport: int, dport: int) -> None:
    """Drop every segment sent from sport to dport on loopback, in this namespace."""
    rules = (
        "table inet blackhole {\n"
        " chain out { type filter hook output priority 0; policy accept;\n"
        f"  tcp sport {sport} tcp dport {dport} drop\n"
        " }\n"
        "}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True, timeout=10)


class Holder:
    """A backend that echoes, remembers the proxy's end of each connection that carried
    bytes (not the health checks'), and when each of those ended and how."""

    def __init__(self) -> None:
        self.peers: list[int] = []
        self.ended: list[tuple[float, str]] = []
        self.accepted = threading.Event()
        self.backend = Backend(self.handle)

    def handle(self, conn: socket.socket) -> None:
        first = conn.recv(65536)
        if not first:
            return  # a health check
        self.peers.append(conn.getpeername()[1])
        conn.sendall(first)
        self.accepted.set()
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
            how = "fin"
        except OSError as err:
            how = type(err).__name__
        self.ended.append((time.monotonic(), how))


def start(tmp_path: Path, holder: Holder, **extra: object) -> tuple[Proxy, int]:
    (port,) = free_ports(1)
    config = {"Workers": 1, "Apps": [app("ka", [port], [holder.backend.address], **extra)]}
    return Proxy(tmp_path, config), port


def connected(port: int, holder: Holder) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=BOUND + 5)
    client.sendall(b"ping")
    assert client.recv(4) == b"ping"
    assert holder.accepted.wait(5)
    return client


def wait_end(client: socket.socket) -> str:
    """Read until the proxy ends the client's connection: how it ended."""
    try:
        while client.recv(65536):
            pass
        return "fin"
    except TimeoutError:
        return "still open"
    except OSError as err:
        return type(err).__name__


def test_keepalive_finds_a_blackholed_target(tmp_path: Path, namespace: str) -> None:
    holder = Holder()
    proxy, port = start(tmp_path, holder, TcpKeepalive={"Idle": 1, "Interval": 1, "Count": 2})
    client = connected(port, holder)
    # The target stops answering: the proxy's probes go unacknowledged.
    blackhole(holder.backend.port, holder.peers[0])
    began = time.monotonic()
    how = wait_end(client)
    took = time.monotonic() - began
    print(f"blackholed target found in {took:.2f} s (keepalive 1 s + 2 x 1 s)")
    assert how == "ConnectionResetError", how  # cut, not a clean end
    assert 2.0 < took < BOUND, took
    assert proxy.stop() == 0


def test_keepalive_finds_a_blackholed_client(tmp_path: Path, namespace: str) -> None:
    holder = Holder()
    proxy, port = start(tmp_path, holder, TcpKeepalive={"Idle": 1, "Interval": 1, "Count": 2})
    client = connected(port, holder)
    began = time.monotonic()
    blackhole(client.getsockname()[1], port)  # the client stops answering
    deadline = began + BOUND + 2
    while not holder.ended and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holder.ended, "the target's connection outlived a blackholed client"
    ended_at, how = holder.ended[0]
    took = ended_at - began
    print(f"blackholed client found in {took:.2f} s")
    assert how == "ConnectionResetError", how
    assert 2.0 < took < BOUND, took
    assert proxy.stop() == 0


def test_user_timeout_ends_unacknowledged_data(tmp_path: Path, namespace: str) -> None:
    holder = Holder()
    proxy, port = start(tmp_path, holder, TcpUserTimeout="1500ms")
    client = connected(port, holder)
    blackhole(holder.backend.port, holder.peers[0])
    began = time.monotonic()
    client.sendall(b"x" * 1000)  # relayed to the target, never acknowledged
    how = wait_end(client)
    took = time.monotonic() - began
    print(f"unacknowledged target found in {took:.2f} s (TcpUserTimeout 1.5 s)")
    assert how == "ConnectionResetError", how
    assert 1.4 < took < BOUND, took
    assert proxy.stop() == 0


def test_keepalive_config_errors(tmp_path: Path) -> None:
    from fastproxy.config import ConfigError, parse_config

    def error(**extra: object) -> str:
        with pytest.raises(ConfigError) as info:
            parse_config({"Apps": [app("a", [1], ["127.0.0.1:2"], **extra)]}, "c.json")
        return str(info.value)

    assert "TcpKeepalive.Idle: must be whole seconds" in error(TcpKeepalive={"Idle": 0.5})
    assert "TcpKeepalive.Count: must be between 1 and 127" in error(TcpKeepalive={"Count": 0})
    assert 'did you mean "Interval"' in error(TcpKeepalive={"Intervall": 2})
    assert "TcpKeepalive: expected true, false or an object" in error(TcpKeepalive=3)
    assert "TcpUserTimeout: must be >= 0 seconds" in error(TcpUserTimeout=-1)
    ok = parse_config({"Apps": [app("a", [1], ["127.0.0.1:2"], TcpKeepalive=True)]})
    assert ok.apps[0].keepalive is not None and ok.apps[0].keepalive.count == 6
