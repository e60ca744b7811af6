"""MaxConnectionsPerSource: concurrent connections per client address (the one a
PROXY header carries when there is one); extra clients are closed at once and
counted, next to the MaxConnections rejections."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import time
from pathlib import Path

from fastproxy import _relay, netns
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


def closed_at_once(sock: socket.socket) -> bool:
    """Closed by the proxy well before the 5 s preface timeout would close a
    client left in its preface (2.5 s: room for a loaded machine)."""
    sock.settimeout(2.5)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def closed_at_once_among(socks: list[socket.socket], count: int) -> list[socket.socket]:
    """The `count` sockets the proxy closes, waiting at most 2.5 s (well before the
    5 s preface timeout) for them; fails if fewer, or more, are closed."""
    closed: list[socket.socket] = []
    deadline = time.monotonic() + 2.5
    while len(closed) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([s for s in socks if s not in closed], [], [], 0.1)
        for sock in ready:
            assert closed_at_once(sock)
            closed.append(sock)
    time.sleep(0.2)  # and no other
    assert not select.select([s for s in socks if s not in closed], [], [], 0)[0]
    assert len(closed) == count
    return closed


def test_one_ipv6_64_is_one_source(tmp_path: Path) -> None:
    """Issue 19, finding 3: 20 addresses of one /64 all passed a limit of 3.
    SourceMask (default IPv6 /64) makes them one source."""
    with netns.temporary("fp-persource6"):
        for i in range(1, 21):
            subprocess.run(["ip", "-6", "addr", "add", f"2001:db8:1::{i:x}/64", "dev", "lo",
                            "nodad"], check=True, timeout=10)  # fmt: skip
        subprocess.run(["ip", "-6", "addr", "add", "2001:db8:2::1/64", "dev", "lo", "nodad"],
                       check=True, timeout=10)  # fmt: skip
        backend = NamedEchoServer("b")
        (port,) = free_ports(1)
        config = {"Listen": "::", "Apps": [app("v6", [port], [backend.address],
                                               MaxConnectionsPerSource=3)]}  # fmt: skip
        proxy = Proxy(tmp_path, config)

        def client(source: str) -> socket.socket:
            sock = socket.create_connection(("2001:db8:1::1", port), timeout=10,
                                            source_address=(source, 0))  # fmt: skip
            return sock

        held, refused = [], 0
        for i in range(1, 21):
            sock = client(f"2001:db8:1::{i:x}")
            if closed_at_once(sock):
                refused += 1
                sock.close()
            else:
                held.append(sock)
        assert (len(held), refused) == (3, 17)
        other = client("2001:db8:2::1")  # another /64 is another source
        assert other.recv(100) == b"b\n"
        assert metric(proxy, "fastproxy_rejected_total", app="v6", reason="per-source") == 17
        for sock in [*held, other]:
            sock.close()
        proxy.stop()
        backend.close()


def test_silent_clients_in_their_preface_count(tmp_path: Path) -> None:
    """Issue 19, finding 3: clients still owing their PROXY header were not counted
    (one address held 1,500 under a limit of 3). With `true` (any sender) they
    count against the sender from accept; with trusted senders, against
    MaxConnectionsInPreface."""
    backend = NamedEchoServer("b")
    port, trusted_port = free_ports(2)
    apps = [
        app("any", [port], [backend.address], MaxConnectionsPerSource=3,
            AcceptProxyProtocol=True),
        app("trusted", [trusted_port], [backend.address], MaxConnectionsInPreface=5,
            AcceptProxyProtocol=["127.0.0.1/32"]),
    ]  # fmt: skip
    proxy = Proxy(tmp_path, {"Apps": apps})
    # Which of them is closed depends on which worker takes which first: exactly one.
    silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
    (refused,) = closed_at_once_among(silent, 1)
    silent.remove(refused)
    assert metric(proxy, "fastproxy_rejected_total", app="any", reason="per-source") == 1
    trusted = [socket.create_connection(("127.0.0.1", trusted_port), timeout=10)
               for _ in range(6)]  # fmt: skip
    (refused,) = closed_at_once_among(trusted, 1)
    trusted.remove(refused)
    assert metric(proxy, "fastproxy_rejected_total", app="trusted", reason="preface") == 1
    # a client whose header is in leaves the preface and frees its place there
    done = trusted.pop()
    done.sendall(b"PROXY TCP4 198.51.100.1 10.0.0.1 5000 443\r\n")
    assert done.recv(100) == b"b\n"
    fresh = socket.create_connection(("127.0.0.1", trusted_port), timeout=10)
    assert not closed_at_once(fresh)
    silent += trusted
    for sock in [*silent, done, fresh]:
        sock.close()
    proxy.stop()
    backend.close()


def test_source_buckets_are_keyed_per_process() -> None:
    """Issue 19, finding 3: an unkeyed hash let an attacker find offline an address
    sharing a victim's bucket. The key is random per process: the same addresses
    land in other buckets in another process, and addresses of one source in one."""
    code = (
        "from fastproxy import _relay as r;"
        "print([r.source_bucket_for_tests(f'198.51.100.{i}') for i in range(64)])"
    )
    runs = {subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                           text=True, timeout=60).stdout for _ in range(2)}  # fmt: skip
    assert len(runs) == 2
    bucket = _relay.source_bucket_for_tests
    assert bucket("2001:db8::1") == bucket("2001:db8::ffff:1") != bucket("2001:db8:0:1::1")
    assert bucket("10.1.2.3", mask4=24) == bucket("10.1.2.200", mask4=24)
    assert bucket("::ffff:10.1.2.3") == bucket("10.1.2.3")
