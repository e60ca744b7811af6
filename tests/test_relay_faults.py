"""The relay's failure paths: resets, urgent data, failed writes and connects, and
event orders that only a hand-driven worker hits every time.

The harness tests build a Relay that is never started and run its worker 0 from the
test's own thread (`_relay.harness_*`): real sockets, real backends, real epoll, but
the test chooses when each event batch runs and may add chosen events to it."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from fastproxy import _relay
from fastproxy.backends import NamedEchoServer
from servers import reset

RESET = select.EPOLLERR | select.EPOLLHUP | select.EPOLLIN | select.EPOLLRDHUP


@pytest.fixture
def named_backends() -> Iterator[list[NamedEchoServer]]:
    servers = [NamedEchoServer(f"backend-{i}") for i in range(2)]
    yield servers
    for server in servers:
        server.close()


class HandDriven:
    """A relay with one app on one listening port, whose worker runs only when the
    test says so."""

    def __init__(self, targets: list[tuple[str, int]], **app: object) -> None:
        self.relay = _relay.Relay(workers=1, **app.pop("relay", {}))  # type: ignore[arg-type]
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port: int = self.listener.getsockname()[1]
        self.relay.set_app(
            0,
            app_slot=0,
            targets=[
                (socket.AF_INET, host, port, i + 1, _relay.TARGET_UP)
                for i, (host, port) in enumerate(targets)
            ],
            **app,  # type: ignore[arg-type]
        )
        self.relay.set_port(self.port, 0)
        self.relay.add_listener(self.listener.fileno(), self.port)

    def close(self) -> None:
        self.relay.remove_listener(self.listener.fileno())
        self.listener.close()

    def step(self, timeout_ms: int = 10) -> int:
        return _relay.harness_step(self.relay, timeout_ms)

    def run_until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the relay did not get there"
            self.step()

    def connections(self) -> dict[int, dict[str, object]]:
        """Open connections by the port of their client."""
        return {c["client_port"]: c for c in _relay.harness_connections(self.relay)}

    def connect(self, count: int) -> list[socket.socket]:
        """Clients accepted by the relay, each with its connect to a target under way."""
        clients = [
            socket.create_connection(("127.0.0.1", self.port), timeout=5) for _ in range(count)
        ]
        self.run_until(lambda: len(self.connections()) == count)
        return clients

    def exchange(self, sock: socket.socket, payload: bytes, timeout: float = 5.0) -> bytes:
        """Send, half-close, and read to EOF while stepping the worker."""
        sock.setblocking(False)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.step()
            try:
                chunk = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
        raise AssertionError(f"no EOF after {timeout} s; got {b''.join(chunks)[:80]!r}")

    def stats(self, slot: int) -> dict[str, int]:
        return dict(zip(_relay.STATS_FIELDS, self.relay.stats(slot)))

    def assert_nothing_held(self) -> None:
        """Every connection finished, counted and given back."""
        self.run_until(lambda: self.relay.connections() == 0)
        for _ in range(3):
            self.step(0)  # let the graveyard go
        held = _relay.harness_held(self.relay)
        assert held["connections"] == 0
        if _relay.DEBUG:
            assert held == {"connections": 0, "allocated": 0, "sockets": 0, "pipes": 0}
        assert self.stats(0)["active"] == 0
        for slot in range(1, 3):
            assert self.stats(slot)["active"] == 0


def test_retry_queue_survives_a_client_reset_in_the_same_batch(
    named_backends: list[NamedEchoServer],
) -> None:
    """Three connects fail in one batch, and the client of the second one resets in
    that same batch, between the failures: every other client still fails over."""
    relay = HandDriven([("127.0.0.1", b.port) for b in named_backends])
    try:
        a, b, c = relay.connect(3)
        conns = relay.connections()
        ids = [conns[s.getsockname()[1]]["id"] for s in (a, b, c)]
        assert [conns[s.getsockname()[1]]["state"] for s in (a, b, c)] == ["connecting"] * 3
        reset(b)
        failed = select.EPOLLERR | select.EPOLLHUP
        _relay.harness_inject(
            relay.relay,
            [
                (ids[0], "srv", failed),
                (ids[1], "srv", failed),
                (ids[1], "cli", RESET),
                (ids[2], "srv", failed),
            ],
        )
        for sock, payload in ((a, b"first"), (c, b"third")):
            name, _, echo = relay.exchange(sock, payload).partition(b"\n")
            assert name.startswith(b"backend-") and echo == payload
            sock.close()
        relay.assert_nothing_held()
        failures = relay.stats(1)["connect_failures"] + relay.stats(2)["connect_failures"]
        assert failures == 3
        assert relay.stats(0)["connections"] == 3
    finally:
        relay.close()
