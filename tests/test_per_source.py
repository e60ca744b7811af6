"""MaxConnectionsPerSource: concurrent connections per client address (the one a
PROXY header carries when there is one); extra clients are closed at once and
counted, next to the MaxConnections rejections."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from fastproxy.backends import NamedEchoServer
from metricsutil import metric
from proxyproc import Proxy, app, free_ports
from servers import talk


def connect(port: int, source: str = "127.0.0.1", header: bytes = b"") -> socket.socket:
    """A client that holds its connection, once the backend has answered."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.sendall(header)
    assert sock.recv(100).endswith(b"\n")  # the backend's name: the connection is through
    return sock


def turned_away(port: int, source: str = "127.0.0.1", header: bytes = b"") -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0)) as sock:  # fmt: skip
        sock.sendall(header)
        try:
            return sock.recv(100) == b""
        except ConnectionResetError:
            return True


def wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_per_source_limit(tmp_path: Path) -> None:
    backend = NamedEchoServer("b")
    port, capped = free_ports(2)
    apps = [
        app("limited", [port], [backend.address], MaxConnectionsPerSource=2),
        app("capped", [capped], [backend.address], MaxConnections=1),
    ]
    proxy = Proxy(tmp_path, {"Apps": apps})
    held = [connect(port), connect(port)]
    assert turned_away(port)
    assert talk(port, b"x", source="127.0.0.2").endswith(b"x")  # another address is welcome
    held.pop().close()
    wait_for(lambda: proxy.status()["apps"][0]["active"] == 1)
    held.append(connect(port))  # the freed place is taken again
    assert turned_away(port)
    assert metric(proxy, "fastproxy_rejected_total", app="limited", reason="per-source") == 2
    # MaxConnections rejections keep their own reason
    first = connect(capped)
    assert turned_away(capped)
    assert metric(proxy, "fastproxy_rejected_total", app="capped", reason="max-connections") == 1
    assert metric(proxy, "fastproxy_rejected_total", app="capped", reason="per-source") == 0
    for sock in [*held, first]:
        sock.close()
    backend.close()


def test_per_source_counts_the_address_a_proxy_header_carries(tmp_path: Path) -> None:
    backend = NamedEchoServer("b")
    (port,) = free_ports(1)
    apps = [app("behind-lb", [port], [backend.address], MaxConnectionsPerSource=1,
                AcceptProxyProtocol=True)]  # fmt: skip

    def header(client: str) -> bytes:
        return f"PROXY TCP4 {client} 10.0.0.1 5000 443\r\n".encode()

    proxy = Proxy(tmp_path, {"Apps": apps})
    held = [
        connect(port, header=header("198.51.100.1")),
        connect(port, header=header("198.51.100.2")),
    ]
    assert turned_away(port, header=header("198.51.100.1"))
    # a reload keeps who is connected
    proxy.write_config({**{"Steering": "ports", "Listen": "127.0.0.1", "Admin": "127.0.0.1:0"},
                        "Apps": [dict(apps[0], IdleTimeout=600)]})  # fmt: skip
    wait_for(lambda: proxy.status()["reloads"]["success"] == 1)
    assert turned_away(port, header=header("198.51.100.2"))
    assert metric(proxy, "fastproxy_rejected_total", app="behind-lb", reason="per-source") == 2
    for sock in held:
        sock.close()
    backend.close()
