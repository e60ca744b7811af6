"""No local user can take the admin endpoint from its operator (issue 19, finding 5):
with more than 64 connections pipelining GETs from three addresses and slow-loris
connections besides, /healthz answers within 100 ms every time, the operator's
authenticated POSTs succeed, and a scraper from an address of its own is served
(each address has at most its share of the slots)."""

from __future__ import annotations

import collections
import heapq
import json
import multiprocessing
import multiprocessing.connection
import os
import resource
import selectors
import signal
import socket
import statistics
import time
from pathlib import Path

from fastproxy import netns
from proxyproc import Proxy, app, free_ports

ATTACKERS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")  # any local user can use all of 127/8
PIPELINERS_PER_ADDRESS = 24  # 72 in all: more than the endpoint's 64 slots
LORIS = 100  # from 127.0.0.1, like the operator's probes
DEPTH = 32  # requests each pipeliner keeps in flight
REQUEST = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
RECONNECT = {"pipe": 0.1, "loris": 0.5}  # seconds before a closed attacker comes back


class Pipeliners:
    """In a process of its own, as an attacker would be: PIPELINERS_PER_ADDRESS
    connections from each of ATTACKERS keeping DEPTH requests in flight, and LORIS
    connections that send part of a request line and stall; every one comes back
    RECONNECT after the endpoint closes it."""

    def __init__(self, address: tuple[str, int], seconds: float) -> None:
        self.address = address
        self.seconds = seconds
        self.connects = 0
        self.answers: collections.Counter[bytes] = collections.Counter()
        context = multiprocessing.get_context("fork")
        self._results, child_end = context.Pipe(duplex=False)
        self._process = context.Process(target=self._main, args=(child_end,), daemon=True)

    def start(self) -> None:
        self._process.start()

    def wait(self) -> None:
        assert self._results.poll(self.seconds + 30), "the attack did not end"
        self.connects, self.answers = self._results.recv()
        self._process.join(10)

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join(10)

    def _main(self, results: multiprocessing.connection.Connection) -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        self.selector = selectors.DefaultSelector()
        self._comebacks: list[tuple[float, str, str]] = []  # a heap: the next one first
        for source in ATTACKERS:
            for _ in range(PIPELINERS_PER_ADDRESS):
                self._open("pipe", source)
        for _ in range(LORIS):
            self._open("loris", ATTACKERS[0])
        until = time.monotonic() + self.seconds
        while time.monotonic() < until:
            for key, mask in self.selector.select(0.02):
                self._event(key, mask)
            now = time.monotonic()
            while self._comebacks and self._comebacks[0][0] <= now:
                _, kind, source = heapq.heappop(self._comebacks)
                self._open(kind, source)
        results.send((self.connects, self.answers))

    def _open(self, kind: str, source: str) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((source, 0))
        sock.connect_ex(self.address)
        # [kind, source, connected, responses expected]
        self.selector.register(sock, selectors.EVENT_WRITE, [kind, source, False, 0])

    def _event(self, key: selectors.SelectorKey, mask: int) -> None:
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        state = key.data
        kind = state[0]
        try:
            if not state[2]:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    raise ConnectionError
                state[2] = True
                self.connects += 1
                if kind == "loris":
                    sock.send(b"GET /status HTT")
                else:
                    sock.send(REQUEST * DEPTH)
                    state[3] = DEPTH
                self.selector.modify(sock, selectors.EVENT_READ, state)
                return
            data = sock.recv(1 << 16)
            if not data or kind == "loris":
                raise ConnectionError
            for head in data.split(b"HTTP/1.1 ")[1:]:
                self.answers[head[:3]] += 1
                state[3] -= 1
            if state[3] <= DEPTH // 2:  # keep the pipeline full
                sock.send(REQUEST * (DEPTH - state[3]))
                state[3] = DEPTH
        except OSError:
            self.selector.unregister(sock)
            sock.close()
            heapq.heappush(self._comebacks, (time.monotonic() + RECONNECT[kind], kind, state[1]))


def get(
    address: tuple[str, int], request: bytes, source: str = "127.0.0.1", whole: bool = False
) -> bytes:
    """One request on a connection of its own (as keepalived's check makes it);
    the answer's status line (`whole`: all of it), or what went wrong."""
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind((source, 0))
        answer = b""
        try:
            sock.connect(address)
            sock.sendall(request)
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError as exc:
            return f"{type(exc).__name__} after {len(answer)} bytes".encode()
        return answer if whole else answer.split(b"\r\n", 1)[0]


def test_pipelining_clients_cannot_take_the_endpoint(tmp_path: Path) -> None:
    with netns.temporary("fp-starve"):
        pipelining_clients_cannot_take_the_endpoint(tmp_path)


def pipelining_clients_cannot_take_the_endpoint(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("s", [port], ["127.0.0.1:9"])]})
    host, admin_port = proxy.admin.rsplit(":", 1)
    address = (host, int(admin_port))
    token = proxy.token()
    healthz = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    reload = (
        b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: 0\r\n\r\n" % token.encode()
    )
    metrics = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    status = REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    for request in (healthz, metrics, status):  # everything imported and warm
        assert get(address, request) == b"HTTP/1.1 200 OK"
    attack = Pipeliners(address, seconds=8)
    attack.start()
    latencies: list[float] = []
    answers: collections.Counter[bytes] = collections.Counter()
    reloads: list[bytes] = []
    scrapes: list[bytes] = []
    try:
        time.sleep(1.5)  # every attacker has connected; the pipelines are full
        for probe in range(50):
            started = time.monotonic()
            answer = get(address, healthz)
            latencies.append(time.monotonic() - started)
            answers[answer] += 1
            if probe % 10 == 5:
                reloads.append(get(address, reload))
                scrapes.append(get(address, metrics, "127.0.0.9"))
            time.sleep(0.05)
        attack.wait()
    finally:
        attack.kill()
    slow = [round(s * 1000, 1) for s in latencies if s >= 0.1]
    print(
        f"\n{attack.connects} attacker connections, their answers"
        f" {dict(attack.answers.most_common(4))}; /healthz {dict(answers)}, median"
        f" {statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms,"
        f" {len(slow)} of 50 over 100 ms; reloads {reloads}; scrapes {scrapes}"
    )
    assert answers == {b"HTTP/1.1 200 OK": 50}, answers
    # Starved, every probe waits its turn behind the attack (seconds). Two stalls of a
    # busy 2-core machine, which runs the attack and the proxy too, are not that.
    assert len(slow) <= 2 and max(latencies) < 1.0, latencies
    assert reloads == [b"HTTP/1.1 200 OK"] * 5
    assert scrapes == [b"HTTP/1.1 200 OK"] * 5
    assert attack.connects >= len(ATTACKERS) * PIPELINERS_PER_ADDRESS + LORIS
    # The pipelines ran, and every ordinary slot was taken: the surplus got 503s.
    assert attack.answers[b"200"] >= 10 and attack.answers[b"503"] >= 100, attack.answers
    # (Asked from an address of its own: the attacker's last requests may still hold
    # 127.0.0.1's slots for a moment.)
    answer = get(address, status, "127.0.0.9", whole=True)
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["reloads"] == {"success": 5, "failure": 0}
    assert "Traceback" not in proxy.log()
    assert proxy.stop() == 0


def test_a_probe_whose_request_waits_unread_is_not_shed_as_silent(tmp_path: Path) -> None:
    """A probe connects, is accepted before its request arrives (its client was held
    up), and its request then waits unread while newcomers from its address crowd in:
    a turn of the endpoint accepts first, and each newcomer sheds the connection of
    that address silent the longest. The probe must be read, and answered, rather
    than shed as silent: CI's flood test once got a reset on /healthz this way. The
    race is made certain by stopping the proxy while the request and the newcomer
    arrive (fails without `_still_silent` in boundedhttp._shed: the probe is reset)."""
    from fastproxy.control.boundedhttp import MAX_PER_SOURCE

    proxy = Proxy(tmp_path, {"Apps": [app("s", free_ports(1), ["127.0.0.1:9"])]})
    host, port = proxy.admin.rsplit(":", 1)
    address = (host, int(port))

    def accepted() -> None:  # every earlier connection: the accept queue is FIFO
        with socket.create_connection(address, timeout=10,
                                      source_address=("127.0.0.2", 0)) as sock:  # fmt: skip
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")

    probe = socket.create_connection(address, timeout=10)  # silent for now
    silent = [socket.create_connection(address, timeout=10) for _ in range(MAX_PER_SOURCE - 1)]
    accepted()
    try:
        os.kill(proxy.pid, signal.SIGSTOP)
        try:
            # The newcomer first: the endpoint's wait may end on it alone, as the stop
            # comes; the request arrives after, unread when the newcomer is accepted.
            newcomer = socket.create_connection(address, timeout=10)  # in the backlog
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            time.sleep(0.1)
        finally:
            os.kill(proxy.pid, signal.SIGCONT)
        answer = probe.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert answer.endswith(b"ok\n"), answer
        newcomer.close()
    finally:
        probe.close()
        for sock in silent:
            sock.close()
    assert proxy.stop() == 0
