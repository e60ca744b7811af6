"""A client still sending its preface (a TLS ClientHello on a port routed by server
name, a PROXY header) while the config is reloaded is routed by the routes in force
when its preface completes, or closed: never to an app it did not ask for, not even
once two reloads have handed the id of the app it asked for to another (SPEC §11)."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from proxyproc import Proxy, app, free_ports
from servers import Backend

QUIET = {"Interval": 3600, "Timeout": 1}  # health checks stay out of the sinks' way


class Sink:
    """A target that records every byte of each connection that sent any."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.backend = Backend(self.handle)
        self.address = self.backend.address

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        data = b"".join(iter(lambda: conn.recv(65536), b""))
        if data:
            self.got.append(data)

    def wait(self, count: int) -> list[bytes]:
        deadline = time.monotonic() + 10
        while len(self.got) < count:
            assert time.monotonic() < deadline, f"{len(self.got)} of {count} streams came"
            time.sleep(0.01)
        return self.got


def client_hello(name: str) -> bytes:
    """The first flight of a real TLS client asking for `name`."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def reload(proxy: Proxy, apps: list[dict[str, Any]]) -> None:
    before = proxy.status()["reloads"]["success"]
    proxy.write_config({"Steering": "ports", "Listen": "127.0.0.1", "Admin": "127.0.0.1:0",
                        "Apps": apps})  # fmt: skip
    deadline = time.monotonic() + 3
    while proxy.status()["reloads"]["success"] == before:
        assert time.monotonic() < deadline, "no reload"
        time.sleep(0.02)


class SlowClient:
    """A client that sends the start of its preface now and the rest later."""

    def __init__(self, port: int, preface: bytes, cut: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rest = preface[cut:] + b"and then the payload"
        self.sock.sendall(preface[:cut])

    def finish(self) -> None:
        """Send the rest, half-close, and wait for the end (the sinks send nothing)."""
        try:
            self.sock.sendall(self.rest)
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.recv(1)
        except OSError:
            pass  # closed by the proxy: a reset is as good
        finally:
            self.sock.close()


@pytest.mark.parametrize("slow", ["hello", "proxy-header"])
def test_slow_preface_on_a_named_port_never_reaches_an_app_that_took_its_id(
    tmp_path: Path, slow: str
) -> None:
    """`secret` and `public` share a port by server name. Clients for each stop half
    way through their preface; `secret` is removed, then `evil` is added on another
    port (and gets the id `secret` had). The `secret.example` client is closed, and
    neither `evil` nor `secret` sees a byte; the `public.example` one reaches `public`."""
    secret, public, evil = Sink(), Sink(), Sink()
    port, other = free_ports(2)
    extra: dict[str, Any] = {"HealthCheck": QUIET}
    if slow == "proxy-header":
        extra["AcceptProxyProtocol"] = True
    named_secret = app("secret", [port], [secret.address], ServerNames=["secret.example"], **extra)
    named_public = app("public", [port], [public.address], ServerNames=["public.example"], **extra)
    proxy = Proxy(tmp_path, {"Apps": [named_secret, named_public]})
    header = b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 443\r\n" if slow == "proxy-header" else b""
    cut = 20 if slow == "proxy-header" else len(header) + 40  # in the header, or the hello
    clients = {
        name: SlowClient(port, header + client_hello(f"{name}.example"), cut)
        for name in ("secret", "public")
    }
    time.sleep(0.2)  # the relay has read what came, and waits for the rest
    reload(proxy, [named_public])
    reload(proxy, [named_public, app("evil", [other], [evil.address], HealthCheck=QUIET)])
    for client in clients.values():
        client.finish()
    [reached_public] = public.wait(1)
    assert reached_public.endswith(b"and then the payload")
    time.sleep(0.2)
    assert evil.got == [], "a client that asked for secret.example reached evil"
    assert secret.got == []
    assert proxy.stop() == 0
    for sink in (secret, public, evil):
        sink.backend.close()


def test_slow_proxy_header_is_routed_by_the_routes_in_force_when_it_completes(
    tmp_path: Path,
) -> None:
    """A client of `secret` (AcceptProxyProtocol) stops half way through its PROXY
    header; `secret` and its port are removed, then `evil` is added on another port.
    The client is closed: the app it asked for is gone. A client of `kept` in the same
    state, whose app two reloads republished, reaches it."""
    secret, kept, evil = Sink(), Sink(), Sink()
    port, kept_port, other = free_ports(3)
    behind = {"AcceptProxyProtocol": True, "HealthCheck": QUIET}
    app_kept = app("kept", [kept_port], [kept.address], **behind)
    proxy = Proxy(tmp_path, {"Apps": [app("secret", [port], [secret.address], **behind), app_kept]})
    header = b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 443\r\n"
    clients = [SlowClient(port, header, 20), SlowClient(kept_port, header, 20)]
    time.sleep(0.2)
    reload(proxy, [app_kept])
    reload(proxy, [app_kept, app("evil", [other], [evil.address], **behind)])
    for client in clients:
        client.finish()
    assert kept.wait(1) == [b"and then the payload"]
    time.sleep(0.2)
    assert evil.got == [], "a client of secret reached evil"
    assert secret.got == [], "a client reached an app removed before its header completed"
    assert proxy.stop() == 0
    for sink in (secret, kept, evil):
        sink.backend.close()
