"""TLS session resumption (SPEC §14): tickets sealed with keys from one ring for the
whole process, so a client resumes on any worker and across reloads; the ring rotates,
and a ticket resumes until its key has left it. Python ssl clients reuse sessions."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from fastproxy import _relay
from metricsutil import metric
from proxyproc import Proxy, free_ports
from servers import RecordingEcho
from tlscerts import Pki
from tlsclient import tls_app


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def visit(
    context: ssl.SSLContext, port: int, session: ssl.SSLSession | None = None
) -> tuple[ssl.SSLSession, bool]:
    """One connection: a byte there and back (TLS 1.3 tickets come after the
    handshake); returns its session and whether it resumed the one given."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname="front.test", session=session) as sock:
        sock.sendall(b"x")
        assert sock.recv(10) == b"x"
        assert sock.session is not None
        return sock.session, sock.session_reused


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_sessions_resume_on_every_worker_and_across_a_reload(
    tmp_path: Path, pki: Pki, version: str
) -> None:
    echo = RecordingEcho()
    front, renewed = pki.issue("front", ["front.test"]), pki.issue("renewed", ["front.test"])
    (port,) = free_ports(1)
    proxy = Proxy(
        tmp_path, {"Workers": 2, "Apps": [tls_app("t", port, [echo.address], [front])]},
        "--no-watch",
    )  # fmt: skip
    context = ssl.create_default_context(cafile=pki.ca)
    context.maximum_version = ssl.TLSVersion[f"TLSv{version.replace('.', '_')}"]
    session, reused = visit(context, port)
    assert not reused
    resumed = [visit(context, port, session)[1] for _ in range(12)]
    assert all(resumed), resumed  # on whichever worker took each
    # A reload builds new contexts (another certificate): the ring is the process's.
    proxy.write_config({"Apps": [tls_app("t", port, [echo.address], [renewed])]})
    assert proxy.http("POST", "/reload")[0] == 200
    assert visit(context, port, session)[1]
    assert metric(proxy, "fastproxy_tls_resumed_total", app="t") == 13
    assert metric(proxy, "fastproxy_tls_handshakes_total", app="t", result="ok") == 14


def test_a_ticket_resumes_until_its_key_leaves_the_ring(pki: Pki) -> None:
    """In process: the relay and the rotation under the test's hand."""
    echo = RecordingEcho()
    context = _relay.TlsContext([pki.issue("front", ["front.test"])])
    relay = _relay.Relay(workers=1)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        target = (socket.AF_INET, "127.0.0.1", echo.backend.port, 1, _relay.TARGET_UP, 1, False)
        relay.set_app(0, targets=[target], app_slot=0, tls=context)
        relay.set_port(port, 0)
        relay.add_listener(listener.fileno(), port)
        relay.start()
        try:
            client = ssl.create_default_context(cafile=pki.ca)
            session, _ = visit(client, port)
            _relay.rotate_ticket_keys()  # an older key still opens it
            newer, reused = visit(client, port, session)
            assert reused
            _relay.rotate_ticket_keys()
            _relay.rotate_ticket_keys()  # gone from the ring: a full handshake
            assert not visit(client, port, session)[1]
            # The ticket given when the older key opened one was sealed with the newest
            # of then: two rotations later it is the oldest in the ring, still good.
            assert visit(client, port, newer)[1]
        finally:
            relay.stop()
    stats = dict(zip(_relay.STATS_FIELDS, relay.stats(0)))
    assert (stats["tls_handshakes"], stats["tls_resumed"]) == (4, 2)


def test_a_resumed_tls13_connection_gets_a_new_ticket(pki: Pki) -> None:
    """TLS 1.3 clients use each ticket once (RFC 8446 §C.4; browsers do): a server
    that seals no new ticket on a resumed connection leaves such a client without one,
    and its next connection is a full handshake. Each visit here offers only the
    ticket of the visit before, as those clients do."""
    echo = RecordingEcho()
    context = _relay.TlsContext([pki.issue("front", ["front.test"])])
    relay = _relay.Relay(workers=1)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        target = (socket.AF_INET, "127.0.0.1", echo.backend.port, 1, _relay.TARGET_UP, 1, False)
        relay.set_app(0, targets=[target], app_slot=0, tls=context)
        relay.set_port(port, 0)
        relay.add_listener(listener.fileno(), port)
        relay.start()
        try:
            client = ssl.create_default_context(cafile=pki.ca)
            client.minimum_version = ssl.TLSVersion.TLSv1_3
            session, _ = visit(client, port)
            for _ in range(4):
                given, reused = visit(client, port, session)
                assert reused
                assert given.id != session.id  # a new ticket, for the next visit
                session = given
        finally:
            relay.stop()
