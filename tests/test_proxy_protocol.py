"""The PROXY protocol header sent to targets (`ProxyProtocol`), checked on the wire:
the exact bytes a target receives before the client's, for IPv4 and IPv6 clients."""

from __future__ import annotations

import queue
import socket
import struct
from pathlib import Path

import pytest

from proxyproc import Proxy, app, free_ports
from servers import Backend

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PAYLOAD = b"after the header"
# The target sees the proxy's active health checks too: a tcp check connects and closes
# without a byte, and the first one falls anywhere in the first interval (with the
# default 2 s, now and then before the relayed connection: this test once took such a
# check for the relayed connection, "the target got no bytes"). Checks every 50 ms, and
# one passed before the client connects, so that every run meets them.
CHECKS = {"Interval": 0.05}


def expected_header(version: str, client: tuple[str, int], local: tuple[str, int]) -> bytes:
    family = socket.AF_INET6 if ":" in client[0] else socket.AF_INET
    if version == "v1":
        tcp = "TCP6" if family == socket.AF_INET6 else "TCP4"
        return f"PROXY {tcp} {client[0]} {local[0]} {client[1]} {local[1]}\r\n".encode()
    addresses = socket.inet_pton(family, client[0]) + socket.inet_pton(family, local[0])
    ports = struct.pack("!HH", client[1], local[1])
    kind = b"\x21" if family == socket.AF_INET6 else b"\x11"  # TCP over IPv6 / IPv4
    return V2_SIGNATURE + b"\x21" + kind + struct.pack("!H", len(addresses) + 4) + addresses + ports


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(
    ("listen", "client_host"),
    [
        ("127.0.0.1", "127.0.0.1"),  # IPv4
        ("::1", "::1"),  # IPv6
        ("::", "127.0.0.1"),  # IPv4 on a dual-stack socket: sent as IPv4, not ::ffff:...
    ],
)
def test_target_receives_the_exact_header_then_the_client_bytes(
    tmp_path: Path, version: str, listen: str, client_host: str
) -> None:
    relayed: queue.Queue[bytes] = queue.Queue()

    def record(conn: socket.socket) -> None:
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
        if data:  # else a health check's connection: the relayed one starts with the header
            relayed.put(data)

    target = Backend(record)
    (port,) = free_ports(1)
    proxy = Proxy(
        tmp_path,
        {
            "Listen": listen,
            "Apps": [
                app("pp", [port], [target.address], ProxyProtocol=version, HealthCheck=CHECKS)
            ],
        },
    )
    proxy.wait_for_a_passed_check()
    with socket.create_connection((client_host, port), timeout=5) as sock:
        client = sock.getsockname()[:2]
        local = sock.getpeername()[:2]
        sock.sendall(PAYLOAD)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""  # the target closes after reading everything
    try:
        stream = relayed.get(timeout=5)
    except queue.Empty:
        pytest.fail("the target got no bytes on any connection: no header, no payload")
    assert stream == expected_header(version, client, local) + PAYLOAD
    assert relayed.empty(), "a second connection to the target carried bytes"
    assert proxy.stop() == 0
    target.close()
