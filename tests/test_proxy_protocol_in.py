"""AcceptProxyProtocol: clients behind another balancer start with a PROXY v1 or v2
header; the address in it is the client's for everything after (the PROXY header
sent on, source-hash), the bytes after it are relayed untouched, and a missing or
malformed header closes the client and is counted."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import struct
import time
from pathlib import Path

import pytest

from fastproxy.backends import NamedEchoServer
from metricsutil import metric
from proxyproc import Proxy, app, free_ports
from servers import Backend

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(src: tuple[str, int], dst: tuple[str, int], tlvs: bytes = b"") -> bytes:
    ip = ipaddress.ip_address(src[0])
    family = 0x11 if ip.version == 4 else 0x21
    body = (
        ip.packed + ipaddress.ip_address(dst[0]).packed + struct.pack("!HH", src[1], dst[1]) + tlvs
    )
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


class Recorder:
    """A backend that reads the PROXY v1 line the proxy sends on, then echoes the
    rest and records (line, sha256 of the rest)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.backend = Backend(self.handle)
        self.address = self.backend.address

    def handle(self, conn: socket.socket) -> None:
        line = b""
        while not line.endswith(b"\r\n"):
            byte = conn.recv(1)
            if not byte:
                return
            line += byte
        digest = hashlib.sha256()
        while data := conn.recv(65536):
            digest.update(data)
            conn.sendall(data)
        self.seen.append((line.decode().strip(), digest.hexdigest()))
        conn.shutdown(socket.SHUT_WR)


def exchange(port: int, *pieces: bytes, pause: float = 0.0) -> bytes:
    """Send the pieces (pausing between them), half-close, read the whole reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(pause)
        sock.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: sock.recv(65536), b""))


def closed_without_reply(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def start(tmp_path: Path, backend: str, **extra: object) -> tuple[Proxy, int]:
    (port,) = free_ports(1)
    settings = {"AcceptProxyProtocol": True, **extra}
    return Proxy(tmp_path, {"Apps": [app("behind-lb", [port], [backend], **settings)]}), port


PAYLOAD = bytes(range(256)) * 4096 + b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n"  # 1 MiB and a bit


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_carried_address_is_sent_on_and_payload_is_untouched(tmp_path: Path, version: str) -> None:
    recorder = Recorder()
    proxy, port = start(tmp_path, recorder.address, ProxyProtocol="v1")
    if version == "v1":
        header = b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 443\r\n"
    else:  # with TLVs, which are skipped
        header = v2_header(("203.0.113.7", 40001), ("198.51.100.1", 443), b"\x04\x00\x02ab")
    reply = exchange(port, header + PAYLOAD)
    assert reply == PAYLOAD
    assert recorder.seen == [
        ("PROXY TCP4 203.0.113.7 198.51.100.1 40001 443", hashlib.sha256(PAYLOAD).hexdigest())
    ]
    assert metric(proxy, "fastproxy_proxy_protocol_errors_total", app="behind-lb") == 0


def test_ipv6_header_split_across_segments(tmp_path: Path) -> None:
    recorder = Recorder()
    proxy, port = start(tmp_path, recorder.address, ProxyProtocol="v1")
    header = v2_header(("2001:db8::7", 5555), ("2001:db8::1", 8443))
    pieces = [header[i : i + 5] for i in range(0, len(header), 5)] + [b"after"]
    assert exchange(port, *pieces, pause=0.02) == b"after"
    assert recorder.seen[0][0] == "PROXY TCP6 2001:db8::7 2001:db8::1 5555 8443"


def test_local_and_unknown_keep_the_real_peer(tmp_path: Path) -> None:
    recorder = Recorder()
    proxy, port = start(tmp_path, recorder.address, ProxyProtocol="v1")
    local = V2_SIGNATURE + bytes([0x20, 0x00, 0x00, 0x00])
    assert exchange(port, local + b"x") == b"x"
    assert exchange(port, b"PROXY UNKNOWN\r\ny") == b"y"
    for line, _ in recorder.seen:
        assert line.startswith("PROXY TCP4 127.0.0.1 127.0.0.1 "), line


def test_source_hash_follows_the_carried_address(tmp_path: Path) -> None:
    backends = [NamedEchoServer(f"b{i}") for i in range(3)]
    (port,) = free_ports(1)
    Proxy(
        tmp_path,
        {
            "Apps": [
                app(
                    "hashed",
                    [port],
                    [b.address for b in backends],
                    AcceptProxyProtocol=True,
                    Balance="source-hash",
                )
            ]
        },
    )

    def backend_for(client: str) -> str:
        header = f"PROXY TCP4 {client} 10.0.0.1 1234 80\r\n".encode()
        return exchange(port, header).split(b"\n")[0].decode()

    chosen = {f"10.1.{i}.9": backend_for(f"10.1.{i}.9") for i in range(24)}
    assert len(set(chosen.values())) == 3  # the real peer is always 127.0.0.1
    for client, name in list(chosen.items())[:6]:
        assert backend_for(client) == name
    for b in backends:
        b.close()


@pytest.mark.parametrize(
    "bad",
    [
        b"GET / HTTP/1.0\r\n\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        b"PROXY " + b"A" * 120,
        V2_SIGNATURE + bytes([0x21, 0x11, 0x00, 0x04]) + b"\x00" * 4,  # address too short
        V2_SIGNATURE + bytes([0x21, 0x11, 0x00, 0x0F]) + b"\x00" * 12 + b"\x01\x00\x09",
    ],
)
def test_malformed_header_is_closed_and_counted(tmp_path: Path, bad: bytes) -> None:
    backend = Recorder()  # health checks connect too, but send nothing
    proxy, port = start(tmp_path, backend.address)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(bad)
        assert closed_without_reply(sock)
    assert metric(proxy, "fastproxy_proxy_protocol_errors_total", app="behind-lb") == 1
    assert backend.seen == []


def test_silent_and_truncated_clients_are_closed_and_counted(tmp_path: Path) -> None:
    backend = Recorder()  # health checks connect too, but send nothing
    proxy, port = start(tmp_path, backend.address)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as truncated:
        truncated.sendall(b"PROXY TCP4 1.2.3.4 ")
        truncated.shutdown(socket.SHUT_WR)
        assert closed_without_reply(truncated)
    begun = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as silent:
        silent.sendall(b"PROXY TCP4 1.2")  # and nothing more
        assert closed_without_reply(silent)
    assert 4.5 <= time.monotonic() - begun <= 8  # 5 s, checked every second
    assert metric(proxy, "fastproxy_proxy_protocol_errors_total", app="behind-lb") == 2
    assert backend.seen == []


class CountingBackend:
    """Records the first line (the PROXY line the proxy sends on) of every connection
    that sends one, then echoes. A health check's connection sends nothing: counted, it
    would race the relayed ones (checks run every 2 s, the first at a random moment)."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.backend = Backend(self.handle)
        self.address = self.backend.address

    def handle(self, conn: socket.socket) -> None:
        data = b""
        while not data.endswith(b"\r\n") and (byte := conn.recv(1)):
            data += byte
        if data:
            self.lines.append(data)
        while chunk := conn.recv(65536):
            conn.sendall(chunk)


def test_only_trusted_senders_may_send_a_header(tmp_path: Path) -> None:
    """Issue 19, finding 2: a PROXY header from a sender outside AcceptProxyProtocol's
    CIDRs is closed before any target hears of it, and counted."""
    backend = CountingBackend()
    (port,) = free_ports(1)
    trusted = {"AcceptProxyProtocol": ["127.0.0.1/32", "::1/128"], "ProxyProtocol": "v1"}
    proxy = Proxy(tmp_path, {"Apps": [app("behind-lb", [port], [backend.address], **trusted)]})
    header = b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 443\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=("127.0.0.1", 0)) as sock:  # fmt: skip
        sock.sendall(header + b"hello")
        assert sock.recv(100) == b"hello"
    assert backend.lines[0].startswith(b"PROXY TCP4 198.51.100.7 ")  # the claimed client
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=10,
                                      source_address=("127.0.0.2", 0)) as sock:  # fmt: skip
            sock.sendall(header + b"forged")
            assert closed_without_reply(sock)
    time.sleep(0.2)
    assert len(backend.lines) == 1  # the target never saw an untrusted sender
    assert metric(proxy, "fastproxy_rejected_total", app="behind-lb", reason="untrusted-proxy") == 3
    assert metric(proxy, "fastproxy_clients_total", app="behind-lb") == 1
    proxy.stop()
    assert "any sender may claim" not in proxy.log()
    backend.backend.close()


def test_true_still_means_any_sender_and_says_so(tmp_path: Path) -> None:
    backend = CountingBackend()
    proxy, port = start(tmp_path, backend.address, ProxyProtocol="v1")
    header = b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 443\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=("127.0.0.2", 0)) as sock:  # fmt: skip
        sock.sendall(header + b"hello")
        assert sock.recv(100) == b"hello"
    assert backend.lines[0].startswith(b"PROXY TCP4 198.51.100.7 ")
    proxy.stop()
    assert 'AcceptProxyProtocol is true for app "behind-lb": any sender may claim' in proxy.log()
    backend.backend.close()
