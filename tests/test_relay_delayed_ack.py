"""A server that writes with Nagle on (TCP_NODELAY off) must not wait on the relay's
delayed ACK (issue 25, finding 8).

Such a server's second write of an answer is held by Nagle while an earlier short segment
is unacknowledged; the socket reading it, the relay's backend socket, acknowledges a
lone short segment only when its delayed-ACK timer fires (40 ms) unless it is told to
acknowledge now. The assertion is on that mechanism, not on a time: the namespace's
TcpExtDelayedACKs counter (ACKs sent by the delayed-ACK timer) over the rounds, in a
network namespace of the test's own where nothing else runs."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxyproc import Proxy, app, free_ports
from servers import Backend

# An HTTP answer of a 64 KiB body and a 296-byte header, written as nginx with
# `tcp_nopush` was seen to send it: all but the last page, then that page.
HEAD = 296 + (60 << 10)
TAIL = 4096
ROUNDS = 100
REQUEST = b"GET /bytes/65536 HTTP/1.1\r\n\r\n"


def tcp_ext(name: str) -> int:
    """One TcpExt counter of the calling thread's network namespace (what nstat reads)."""
    lines = Path("/proc/thread-self/net/netstat").read_text().splitlines()
    for head, row in zip(lines[::2], lines[1::2], strict=True):
        if head.startswith("TcpExt:"):
            return dict(zip(head.split()[1:], map(int, row.split()[1:]), strict=True))[name]
    raise KeyError(name)


def nagle_server(conn: socket.socket) -> None:
    """Answer each request with two writes, Nagle on (the default: no TCP_NODELAY)."""
    head, tail = os.urandom(HEAD), os.urandom(TAIL)
    while conn.recv(4096):
        conn.sendall(head)
        conn.sendall(tail)


@pytest.fixture
def own_netns() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("a network namespace of its own needs root")
    from fastproxy import netns

    with netns.temporary("fpdack"):
        yield


@pytest.mark.parametrize("mode", ["splice", "copy"])
def test_nagle_server_tail_is_not_held_by_the_relays_delayed_ack(
    tmp_path: Path, own_netns: None, mode: str
) -> None:
    backend = Backend(nagle_server)
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("nagle", [port], [backend.address])]}, "--relay", mode)
    try:
        with socket.create_connection(("127.0.0.1", port)) as client:
            # The client acknowledges at once: only the relay's ACKs are counted.
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            before = tcp_ext("DelayedACKs")
            for _ in range(ROUNDS):
                client.sendall(REQUEST)
                got = 0
                while got < HEAD + TAIL:
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                    chunk = client.recv(1 << 20)
                    assert chunk, "the proxy closed mid-answer"
                    got += len(chunk)
                assert got == HEAD + TAIL
            delayed = tcp_ext("DelayedACKs") - before
    finally:
        assert proxy.stop() == 0
        backend.sock.close()
    assert delayed == 0, (
        f"{delayed} of {ROUNDS} answers waited for a delayed ACK (40 ms each):"
        " the server's Nagle-held tail waited on the relay's backend socket"
    )
