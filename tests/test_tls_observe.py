"""What terminated TLS shows (SPEC §14): the access log's server name, version and
cipher; the PROXY v2 header's TLVs (SNI as AUTHORITY, ALPN, PP2_TYPE_SSL) sent to the
target; and when each certificate in force expires."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest

from proxyproc import Proxy, app, free_ports
from servers import Backend, RecordingEcho
from tlscerts import Pki
from tlsclient import client, echo_once, tls_app, wait_for


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def test_access_log_has_sni_version_and_cipher(tmp_path: Path, pki: Pki) -> None:
    echo = RecordingEcho()
    tls_port, plain_port = free_ports(2)
    log_path = tmp_path / "access.log"
    proxy = Proxy(
        tmp_path,
        {"AccessLog": str(log_path), "Apps": [
            tls_app("secure", tls_port, [echo.address], [pki.issue("front", ["front.test"])]),
            app("plain", [plain_port], [echo.address]),
        ]},
    )  # fmt: skip
    with client(pki, tls_port, "front.test") as sock:
        assert echo_once(sock, b"hi\n") == b"hi\n"
        cipher = sock.cipher()[0]  # type: ignore[index]
    with socket.create_connection(("127.0.0.1", plain_port), timeout=5) as sock:
        sock.sendall(b"plain\n")
        assert sock.recv(10) == b"plain\n"
    raw = socket.create_connection(("127.0.0.1", tls_port), timeout=5)
    raw.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS
    with contextlib.suppress(ConnectionResetError):
        raw.recv(10)  # reset: refused
    raw.close()

    def lines() -> list[dict[str, object]]:
        text = log_path.read_text() if log_path.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    wait_for(lambda: len(lines()) >= 3)
    by_result = {(e["app"], e["result"]): e for e in lines()}
    ok = by_result[("secure", "ok")]
    assert (ok["sni"], ok["tls_version"], ok["cipher"]) == ("front.test", "TLSv1.3", cipher)
    assert ok["bytes_in"] == 3
    assert "sni" not in by_result[("plain", "ok")]  # plain TCP lines are as before
    bad = by_result[("secure", "tls-error")]
    assert (bad["sni"], bad["tls_version"], bad["cipher"]) == (None, "none", None)
    assert proxy.stop() == 0


class ProxyV2Recorder:
    """A target that reads a PROXY v2 header, keeps its TLVs, then echoes."""

    def __init__(self) -> None:
        self.tlvs: list[dict[int, bytes]] = []
        self.backend = Backend(self.handle)
        self.address = self.backend.address

    def handle(self, conn: socket.socket) -> None:
        head = self._exactly(conn, 16)
        if len(head) < 16:
            return  # a health check
        assert head[:12] == b"\r\n\r\n\x00\r\nQUIT\n" and head[12] == 0x21
        body = self._exactly(conn, struct.unpack("!H", head[14:16])[0])
        at = 12 if head[13] == 0x11 else 36
        found: dict[int, bytes] = {}
        while at < len(body):
            kind, length = body[at], struct.unpack("!H", body[at + 1 : at + 3])[0]
            found[kind] = body[at + 3 : at + 3 + length]
            at += 3 + length
        self.tlvs.append(found)
        while data := conn.recv(65536):
            conn.sendall(data)

    @staticmethod
    def _exactly(conn: socket.socket, n: int) -> bytes:
        got = b""
        while len(got) < n and (chunk := conn.recv(n - len(got))):
            got += chunk
        return got


def test_proxy_v2_header_carries_sni_alpn_and_tls(tmp_path: Path, pki: Pki) -> None:
    target = ProxyV2Recorder()
    (port,) = free_ports(1)
    Proxy(
        tmp_path,
        {"Apps": [tls_app("pp", port, [target.address], [pki.issue("front", ["front.test"])],
                          Alpn=["h2", "http/1.1"]) | {"ProxyProtocol": "v2"}]},
    )  # fmt: skip
    with client(pki, port, "front.test", alpn=["h2"]) as sock:
        assert echo_once(sock, b"over\n") == b"over\n"
        cipher = sock.cipher()[0]  # type: ignore[index]
    wait_for(lambda: target.tlvs)
    tlvs = target.tlvs[0]
    assert tlvs[0x02] == b"front.test"  # PP2_TYPE_AUTHORITY
    assert tlvs[0x01] == b"h2"  # PP2_TYPE_ALPN
    ssl_tlv = tlvs[0x20]  # PP2_TYPE_SSL: client flags, verify, then sub-TLVs
    assert ssl_tlv[0] & 0x01 and ssl_tlv[1:5] == b"\0\0\0\0"
    sub: dict[int, bytes] = {}
    at = 5
    while at < len(ssl_tlv):
        length = struct.unpack("!H", ssl_tlv[at + 1 : at + 3])[0]
        sub[ssl_tlv[at]] = ssl_tlv[at + 3 : at + 3 + length]
        at += 3 + length
    assert sub[0x21] == b"TLSv1.3"  # PP2_SUBTYPE_SSL_VERSION
    assert sub[0x23] == cipher.encode()  # PP2_SUBTYPE_SSL_CIPHER


def not_after(cert: str) -> float:
    out = subprocess.run(
        ["openssl", "x509", "-in", cert, "-noout", "-enddate"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return float(ssl.cert_time_to_seconds(out.strip().split("=", 1)[1]))


def test_certificate_expiry_metric_follows_reloads(tmp_path: Path, pki: Pki) -> None:
    echo = RecordingEcho()
    (port,) = free_ports(1)
    short = pki.issue("short", ["front.test"], days=3)
    other = pki.issue("other", ["other.test"], days=20)
    longer = pki.issue("longer", ["front.test"], days=30)
    proxy = Proxy(
        tmp_path, {"Apps": [tls_app("x", port, [echo.address], [short, other])]}, "--no-watch"
    )

    def expiry(cert_name: str) -> float:
        # metric() takes labels as keywords, and this one's label is called "name"
        line = f'fastproxy_tls_certificate_expiry_seconds{{app="x",name="{cert_name}"}} '
        for text in proxy.http("GET", "/metrics")[1].decode().splitlines():
            if text.startswith(line):
                return float(text[len(line) :])
        return 0.0

    assert expiry("front.test") == pytest.approx(not_after(short[0]), abs=1)
    assert expiry("other.test") == pytest.approx(not_after(other[0]), abs=1)
    assert not_after(short[0]) - time.time() < 4 * 86400
    proxy.write_config({"Apps": [tls_app("x", port, [echo.address], [longer])]})
    assert proxy.http("POST", "/reload")[0] == 200
    assert expiry("front.test") == pytest.approx(not_after(longer[0]), abs=1)
    assert expiry("other.test") == 0  # gone with its certificate


def test_a_proxy_header_then_tls(tmp_path: Path, pki: Pki) -> None:
    """AcceptProxyProtocol and Tls together: the header is read first (in clear), then
    the handshake; the address it names is the client's in the access log."""
    echo = RecordingEcho()
    (port,) = free_ports(1)
    log_path = tmp_path / "access.log"
    Proxy(
        tmp_path,
        {"AccessLog": str(log_path), "Apps": [
            tls_app("pp-in", port, [echo.address], [pki.issue("front", ["front.test"])])
            | {"AcceptProxyProtocol": ["127.0.0.1/32"]}]},
    )  # fmt: skip
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.sendall(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n")
    context = ssl.create_default_context(cafile=pki.ca)
    with context.wrap_socket(raw, server_hostname="front.test") as sock:
        assert echo_once(sock, b"behind\n") == b"behind\n"

    def entries() -> list[dict[str, object]]:
        text = log_path.read_text() if log_path.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    wait_for(lambda: any(e["result"] == "ok" for e in entries()))
    (entry,) = [e for e in entries() if e["result"] == "ok"]
    assert entry["client"] == "192.0.2.7:40000" and entry["sni"] == "front.test"
