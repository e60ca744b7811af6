"""ServerNames: apps share a port and the relay routes each TLS client by the server
name in its ClientHello, without terminating TLS: real TLS clients (Python's ssl,
openssl s_client) complete their handshake with real TLS servers behind the proxy,
and each name reaches its app."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastproxy import netns
from metricsutil import metric
from proxyproc import Proxy, app, free_ports
from servers import Backend, RecordingEcho

NAMES = ["a.example.com", "*.example.com", "*.b.example.com", "other.test", "c.example.org"]


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for every name the tests use: (cert, key)."""
    where = tmp_path_factory.mktemp("tls")
    certfile, keyfile = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", keyfile, "-out", certfile, "-days", "1", "-subj",
         "/CN=fastproxy-test", "-addext",
         "subjectAltName=" + ",".join(f"DNS:{name}" for name in NAMES)],
        check=True, capture_output=True,
    )  # fmt: skip
    return certfile, keyfile


class TlsBackend:
    """A TLS server: after the handshake it says its name, echoes one line, closes."""

    def __init__(self, name: str, cert: tuple[str, str]) -> None:
        self.name = name
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(*cert)
        self.backend = Backend(self.handle)
        self.address = self.backend.address

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            return  # health checks, and the malformed hellos that must not get here
        tls.sendall(f"{self.name}\n".encode())
        line = b""
        while not line.endswith(b"\n") and (chunk := tls.recv(100)):
            line += chunk
        tls.sendall(line)


@pytest.fixture
def backends(cert: tuple[str, str]) -> Iterator[dict[str, TlsBackend]]:
    servers = {name: TlsBackend(name, cert) for name in ("exact", "wild", "bwild", "fallback")}
    yield servers
    for server in servers.values():
        server.backend.close()


def client_context(cert: tuple[str, str], verify_name: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cert[0])
    context.check_hostname = verify_name
    return context


def ask(port: int, cert: tuple[str, str], name: str | None, host: str = "127.0.0.1") -> str:
    """A full TLS exchange through the proxy: the name of the backend that answered."""
    context = client_context(cert, verify_name=name is not None)
    raw = socket.create_connection((host, port), timeout=10)
    with context.wrap_socket(raw, server_hostname=name) as tls:
        tls.sendall(b"ping\n")
        reply = b""
        while chunk := tls.recv(100):
            reply += chunk
    who, _, echo = reply.partition(b"\n")
    assert echo == b"ping\n"
    return who.decode()


def turned_away(port: int, cert: tuple[str, str], name: str) -> None:
    """A name no app on the port takes: the proxy closes the client at once, with a
    reset (the ClientHello it peeked at is still unread), long before the 5 s
    preface timeout would close it."""
    started = time.monotonic()
    with pytest.raises(ConnectionResetError):
        ask(port, cert, name)
    took = time.monotonic() - started
    assert took < 1.0, f"closed after {took:.1f}s: by the preface timeout?"


def shared_apps(backends: dict[str, TlsBackend], port: int, other: int) -> list[dict]:
    return [
        app("exact", [port], [backends["exact"].address], ServerNames=["a.example.com"]),
        app("wild", [port], [backends["wild"].address], ServerNames=["*.example.com"]),
        app("bwild", [port, other], [backends["bwild"].address], ServerNames=["*.b.example.com"]),
        app("fallback", [port], [backends["fallback"].address]),
    ]


CASES = [
    ("a.example.com", "exact"),
    ("A.Example.COM", "exact"),  # names are case-insensitive
    ("x.example.com", "wild"),
    ("x.b.example.com", "bwild"),  # the longest wildcard wins
    ("b.example.com", "wild"),  # *.b.example.com needs a label before it
    ("other.test", "fallback"),
    (None, "fallback"),  # no server name at all
]


def test_each_name_reaches_its_app(tmp_path: Path, backends, cert) -> None:
    port, other = free_ports(2)
    proxy = Proxy(tmp_path, {"Apps": shared_apps(backends, port, other)})
    for name, expected in CASES:
        assert ask(port, cert, name) == expected, name
    # a port without a default: unknown names are closed and counted
    assert ask(other, cert, "y.b.example.com") == "bwild"
    turned_away(other, cert, "other.test")
    assert metric(proxy, "fastproxy_sni_unmatched_total") == 1
    assert metric(proxy, "fastproxy_connections_total", app="wild",
                  target=backends["wild"].address) == 2  # fmt: skip


def test_openssl_s_client(tmp_path: Path, backends, cert) -> None:
    port, other = free_ports(2)
    Proxy(tmp_path, {"Apps": shared_apps(backends, port, other)})
    for name, expected in (("a.example.com", "exact"), ("z.b.example.com", "bwild")):
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name,
             "-CAfile", cert[0], "-verify_return_error", "-verify_hostname", name, "-quiet"],
            input=b"hello\n", capture_output=True, timeout=20,
        )  # fmt: skip
        assert out.stdout == f"{expected}\nhello\n".encode(), out.stderr


def handshake_in_pieces(port: int, cert: tuple[str, str], name: str, record: int,
                        chunk: int) -> str:  # fmt: skip
    """A TLS client whose ClientHello is cut in TLS records of `record` bytes and
    sent in TCP segments of `chunk` bytes, 10 ms apart."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(cert).wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    first = outgoing.read()
    assert first[0] == 0x16
    message, framed = first[5:], b""
    for i in range(0, len(message), record):
        piece = message[i : i + record]
        framed += first[:3] + len(piece).to_bytes(2, "big") + piece
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(framed), chunk):
            sock.sendall(framed[i : i + chunk])
            time.sleep(0.01)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                data = sock.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)
        tls.write(b"ping\n")
        sock.sendall(outgoing.read())
        reply = b""
        while data := sock.recv(65536):
            incoming.write(data)
            try:
                while piece := tls.read(100):
                    reply += piece
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
    who, _, echo = reply.partition(b"\n")
    assert echo == b"ping\n"
    return who.decode()


def test_client_hello_split_across_segments_and_records(tmp_path: Path, backends, cert) -> None:
    port, other = free_ports(2)
    Proxy(tmp_path, {"Apps": shared_apps(backends, port, other)})
    assert handshake_in_pieces(port, cert, "a.example.com", record=1000, chunk=7) == "exact"
    assert handshake_in_pieces(port, cert, "q.b.example.com", record=60, chunk=50) == "bwild"


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_malformed_and_truncated_hellos_are_closed_and_counted(
    tmp_path: Path, backends, cert
) -> None:
    port, other = free_ports(2)
    proxy = Proxy(tmp_path, {"Apps": shared_apps(backends, port, other)})
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(cert).wrap_bio(incoming, outgoing, server_hostname="a.example.com")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    bad = [
        b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n",  # not TLS
        b"\x16\x03\x01\x00\x00",  # an empty record
        b"\x16\x03\x01\x00\x06\x02\x00\x00\x02\x00\x00",  # not a ClientHello
        hello[:5] + b"\x01\xff\xff\xff" + hello[9:],  # a hello longer than anything we read
        hello[:9] + b"\x03\x03" + bytes(32) + b"\x40" + hello[44:],  # session id too long
    ]
    for data in bad:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(data)
            assert closed(sock), data
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(hello[: len(hello) // 2])
        sock.shutdown(socket.SHUT_WR)  # truncated: the rest never comes
        assert closed(sock)
    assert metric(proxy, "fastproxy_sni_errors_total") == len(bad) + 1
    assert metric(proxy, "fastproxy_sni_unmatched_total") == 0
    assert ask(port, cert, "a.example.com") == "exact"  # and it serves on


def test_proxy_header_before_the_client_hello(tmp_path: Path, backends, cert) -> None:
    port, other = free_ports(2)
    apps = [dict(a, AcceptProxyProtocol=True) for a in shared_apps(backends, port, other)]
    Proxy(tmp_path, {"Apps": apps})
    context = client_context(cert)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 443\r\n")
    with context.wrap_socket(raw, server_hostname="x.b.example.com") as tls:
        tls.sendall(b"ping\n")
        assert tls.recv(100).startswith(b"bwild\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="bpf steering needs root")
def test_names_route_in_bpf_steering_mode(tmp_path: Path, backends, cert) -> None:
    with netns.temporary("fp-l4-relay-sni"):
        # The backends live outside the namespace: start fresh ones inside it.
        inside = {name: TlsBackend(name, cert) for name in backends}
        port, other = 8443, 9443
        proxy = Proxy(
            tmp_path,
            {"Apps": shared_apps(inside, port, other), "Steering": "bpf", "Listen": "::"},
        )
        assert proxy.steering == "bpf"
        for name, expected in CASES:
            assert ask(port, cert, name) == expected, name
        proxy.stop()
        for server in inside.values():
            server.backend.close()


def test_reload_moves_a_name_to_another_app(tmp_path: Path, backends, cert) -> None:
    port, other = free_ports(2)
    apps = shared_apps(backends, port, other)
    proxy = Proxy(tmp_path, {"Apps": apps})
    assert ask(port, cert, "c.example.org") == "fallback"
    apps[0] = dict(apps[0], ServerNames=["a.example.com", "c.example.org"])
    apps[3] = dict(apps[3], ServerNames=["other.test"])  # no default any more
    proxy.write_config({"Steering": "ports", "Listen": "127.0.0.1", "Admin": "127.0.0.1:0",
                        "Apps": apps})  # fmt: skip
    deadline = time.monotonic() + 10
    while proxy.status()["reloads"]["success"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert ask(port, cert, "c.example.org") == "exact"
    assert ask(port, cert, "other.test") == "fallback"
    turned_away(port, cert, "nobody.test")
    assert metric(proxy, "fastproxy_sni_unmatched_total") == 1


def test_failover_resends_the_client_hello_and_counts_it(tmp_path: Path, cert) -> None:
    """The ClientHello is read off the socket to route by name, and held until a
    target is connected: a client whose first target refuses still reaches the next
    one with its hello first, whole, and its bytes are counted once."""
    live = RecordingEcho()
    dead = free_ports(1)[0]  # nothing listens: the connect is refused
    port = free_ports(1)[0]
    named = app("named", [port], [f"127.0.0.1:{dead}", live.address],
                ServerNames=["a.example.com"], HealthCheck={"Interval": 3600})  # fmt: skip
    proxy = Proxy(tmp_path, {"Apps": [named]})
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(cert).wrap_bio(incoming, outgoing, server_hostname="a.example.com")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    sent = 0
    for i in range(4):
        payload = hello + b"after the hello %d" % i
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            echo = b""
            while chunk := sock.recv(65536):
                echo += chunk
        assert echo == payload
        sent += len(payload)
    assert live.streams == [hello + b"after the hello %d" % i for i in range(4)]
    status = proxy.status()["apps"][0]
    assert status["targets"][0]["connect_failures"] >= 1  # round robin tried it first
    assert status["bytes_in"] == sent
    live.backend.close()
