"""Hostile TLS clients (SPEC §12, §14): garbage instead of a ClientHello, a hello cut
short, a hello sent one byte per segment. Each bad client is one access-log line and
one count, the proxy never crashes, and the other clients are served meanwhile."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from metricsutil import metric
from proxyproc import Proxy, free_ports
from servers import RecordingEcho
from tlscerts import Pki
from tlsclient import client, echo_once, tls_app, wait_for


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def client_hello(pki: Pki) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, bytes]:
    """A real ClientHello from Python's ssl, and the half-made client to go on with:
    (client, its incoming and outgoing buffers, the hello)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context(cafile=pki.ca)
    tls = context.wrap_bio(incoming, outgoing, server_hostname="front.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return tls, incoming, outgoing, outgoing.read()


def finish(
    sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> bytes:
    """Complete over `sock` the handshake that client_hello began, then echo a line."""
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if pending := outgoing.read():
                sock.sendall(pending)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake") from None
            incoming.write(data)
    tls.write(b"trickled\n")
    sock.sendall(outgoing.read())
    got = b""
    while not got.endswith(b"\n"):
        data = sock.recv(65536)
        if not data:
            break
        incoming.write(data)
        with contextlib.suppress(ssl.SSLWantReadError):
            got += tls.read(65536)
    return got


@pytest.fixture
def served(tmp_path: Path, pki: Pki):
    """A TLS app with an access log, and a thread of well-behaved clients measuring the
    longest wait any of them had."""
    echo = RecordingEcho()
    (port,) = free_ports(1)
    log_path = tmp_path / "access.log"
    proxy = Proxy(
        tmp_path,
        {"AccessLog": str(log_path), "Workers": 1,
         "Apps": [tls_app("h", port, [echo.address], [pki.issue("front", ["front.test"])],
                          HandshakeTimeout="3s")]},
    )  # fmt: skip
    stop = threading.Event()
    waits: list[float] = []

    def well_behaved() -> None:
        while not stop.is_set():
            start = time.monotonic()
            with client(pki, port, "front.test") as sock:
                assert echo_once(sock, b"ok\n") == b"ok\n"
            waits.append(time.monotonic() - start)
            time.sleep(0.02)

    thread = threading.Thread(target=well_behaved, daemon=True)
    thread.start()
    yield proxy, port, log_path, waits
    stop.set()
    thread.join(10)
    assert waits and max(waits) < 1.0, max(waits)  # nobody else stalled
    assert proxy.proc.poll() is None  # no crash
    assert "Traceback" not in proxy.log()


def bad_lines(log_path: Path) -> list[dict[str, object]]:
    text = log_path.read_text() if log_path.exists() else ""
    lines = [json.loads(line) for line in text.splitlines()]
    return [line for line in lines if line["result"] != "ok"]


def test_garbage_and_truncated_hellos_are_one_line_each(served, pki: Pki) -> None:  # noqa: ANN001
    proxy, port, log_path, _ = served
    *_, hello = client_hello(pki)
    inputs = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not TLS
        os.urandom(3000),  # noise
        b"\x16\x03\x01\xff\xff" + os.urandom(200),  # a record claiming 64 KB
        hello[: len(hello) // 2],  # cut short, then FIN
        hello[:5],  # just the record header
    ]
    for data in inputs:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            # The proxy may have refused it (reset) before we are done sending.
            with contextlib.suppress(ConnectionResetError, BrokenPipeError, OSError):
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(65536):
                    pass  # an alert perhaps, then the end
    wait_for(lambda: len(bad_lines(log_path)) == len(inputs))
    time.sleep(0.3)
    results = sorted(str(line["result"]) for line in bad_lines(log_path))
    assert len(results) == len(inputs)  # one line each, no more
    assert set(results) <= {"tls-error", "tls-closed"}, results
    errors = metric(proxy, "fastproxy_tls_handshakes_total", app="h", result="error")
    closed = metric(proxy, "fastproxy_tls_handshakes_total", app="h", result="closed")
    assert errors + closed == len(inputs)
    assert errors >= 3  # the three that are not TLS at all


def test_a_hello_sent_one_byte_per_segment_completes(served, pki: Pki) -> None:  # noqa: ANN001
    proxy, port, _, waits = served
    tls, incoming, outgoing, hello = client_hello(pki)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(hello)):
            sock.send(hello[i : i + 1])  # its own segment: nothing else is in flight
            time.sleep(0.001)
        assert finish(sock, tls, incoming, outgoing) == b"trickled\n"
    assert len(hello) > 200 and len(waits) > 0
    assert metric(proxy, "fastproxy_tls_handshakes_total", app="h", result="ok") >= 2
