"""A TLS client for bulk tests: sends and reads in one thread. Python's ssl does not
lock its SSL object, so a reader thread and a writer thread on one SSLSocket race inside
OpenSSL (seen here: stalls with the reader's socket full and the reader asleep)."""

from __future__ import annotations

import hashlib
import selectors
import socket
import ssl
import time
from typing import Any

from proxyproc import app
from tlscerts import Pki


def exchange(sock: ssl.SSLSocket, data: bytes, timeout: float = 60.0) -> tuple[str, int]:
    """Send `data` and read as much back, in one thread (an SSL object must not be
    used by two threads at once): returns (sha256 of what came back, its length)."""
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    view = memoryview(data)
    sent = received = 0
    digest = hashlib.sha256()
    deadline = time.monotonic() + timeout
    while received < len(data):
        if time.monotonic() > deadline:
            raise TimeoutError(f"sent {sent}, received {received} of {len(data)}")
        progress = False
        if sent < len(data):
            try:
                n = sock.send(view[sent : sent + (1 << 18)])
                sent += n
                progress = n > 0
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                pass
        while True:
            try:
                chunk = sock.recv(1 << 18)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            if not chunk:
                raise ConnectionError(f"EOF after {received} of {len(data)}")
            digest.update(chunk)
            received += len(chunk)
            progress = True
        if not progress:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if sent < len(data) else 0)
            sel.modify(sock, events)
            sel.select(1.0)
    sel.close()
    return digest.hexdigest(), received


def tls_app(name: str, port: int, targets: list[str], certs: list[tuple[str, str]], **tls: Any):
    return app(
        name, [port], targets,
        Tls={"Certificates": [{"Cert": c, "Key": k} for c, k in certs], **tls},
    )  # fmt: skip


def client(
    pki: Pki, port: int, name: str | None, *, check_name: bool = True, **kw: Any
) -> ssl.SSLSocket:
    """A Python ssl client sending `name` as SNI, that verifies the proxy's certificate
    against the test CA (and `name`, unless told not to)."""
    context = ssl.create_default_context(cafile=pki.ca)
    if name is None or not check_name:
        context.check_hostname = False
    if "alpn" in kw:
        context.set_alpn_protocols(kw.pop("alpn"))
    if "maximum" in kw:
        context.maximum_version = kw.pop("maximum")
    if "certfile" in kw:  # a client certificate
        context.load_cert_chain(kw.pop("certfile"), kw.pop("keyfile"))
    if "session" in kw and kw["session"] is None:
        del kw["session"]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(sock, server_hostname=name, **kw)


def wait_for(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def common_name(sock: ssl.SSLSocket) -> str:
    cert = sock.getpeercert()
    assert cert is not None
    return dict(x[0] for x in cert["subject"])["commonName"]


def echo_once(sock: ssl.SSLSocket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload) and (chunk := sock.recv(65536)):
        got += chunk
    return got
