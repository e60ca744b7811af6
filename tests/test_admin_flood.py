"""Slow and stalled admin clients (issue 10, item 2): 1,000 slow-loris connections,
200 that trickle 16 KiB of headers and 50 that send headers without end, all
reconnecting whenever they are shed, cost the proxy little memory, leave /healthz
answering at once and the relay untouched."""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import multiprocessing
import multiprocessing.connection
import os
import resource
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fastproxy import netns
from fastproxy.backends import NamedEchoServer
from proxyproc import Proxy, app, free_ports
from servers import HashingEcho, send_and_read_back

LORIS, TRICKLERS, BLOATERS = 1000, 200, 50
RECONNECT = 0.5  # seconds before a shed client comes back (slowloris's own loop)
TRICKLE_STEP, TRICKLE_EVERY, TRICKLE_TOTAL = 512, 0.1, 16 * 1024
BLOAT_LINE = b"X-Bloat: " + b"b" * 60_000 + b"\r\n"  # as fast as the endpoint reads


@dataclass
class _Client:
    kind: str
    connected: bool = False
    sent: int = 0
    next_send: float = 0.0


class SlowClients:
    """Keeps LORIS sockets that sent part of a request line and stall, TRICKLERS
    sending a header line every TRICKLE_EVERY up to 16 KiB, never finishing, and
    BLOATERS sending long header lines as fast as they can; each comes back
    RECONNECT after the endpoint closes it. In a process of its own, as
    an attacker would be (and so the probes here compete with it for no lock)."""

    def __init__(self, address: tuple[str, int], seconds: float) -> None:
        self.address = address
        self.seconds = seconds
        self.connects = 0
        self.shed = 0  # closed by the endpoint
        self.answers: collections.Counter[bytes] = collections.Counter()
        self._comebacks: collections.deque[tuple[float, str]] = collections.deque()
        self._results, child_end = multiprocessing.get_context("fork").Pipe(duplex=False)
        self._process = multiprocessing.get_context("fork").Process(
            target=self._main, args=(child_end,), daemon=True
        )

    def start(self) -> None:
        self._process.start()

    def wait(self) -> None:
        """Until the attack is over; then its figures are here."""
        assert self._results.poll(self.seconds + 30), "the attack did not end"
        self.connects, self.shed, self.answers = self._results.recv()
        self._process.join(10)

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join(10)

    def _main(self, results: multiprocessing.connection.Connection) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
        self.selector = selectors.DefaultSelector()
        for kind in ["loris"] * LORIS + ["trickle"] * TRICKLERS + ["bloat"] * BLOATERS:
            self._open(kind)
        self._run(time.monotonic() + self.seconds)
        results.send((self.connects, self.shed, self.answers))

    def _open(self, kind: str) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(self.address)
        self.selector.register(sock, selectors.EVENT_WRITE, _Client(kind))

    def _run(self, until: float) -> None:
        while time.monotonic() < until:
            for key, mask in self.selector.select(0.02):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                client: _Client = key.data
                if not client.connected:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        self._drop_and_return(sock, client)
                        continue
                    client.connected = True
                    self.connects += 1
                    first = b"GET /healthz HTT" if client.kind == "loris" else b"GET / HTTP/1.1\r\n"
                    if not self._send(sock, client, first):
                        continue
                    events = selectors.EVENT_READ
                    if client.kind == "bloat":
                        events |= selectors.EVENT_WRITE
                    self.selector.modify(sock, events, client)
                elif mask & selectors.EVENT_READ:
                    with contextlib.suppress(OSError):
                        self.answers[sock.recv(4096)[:12]] += 1
                    self._drop_and_return(sock, client)
                elif mask & selectors.EVENT_WRITE:
                    self._send(sock, client, BLOAT_LINE)
            self._trickle()
            now = time.monotonic()
            while self._comebacks and self._comebacks[0][0] <= now:
                self._open(self._comebacks.popleft()[1])

    def _drop_and_return(self, sock: socket.socket, client: _Client) -> None:
        self.selector.unregister(sock)
        sock.close()
        self.shed += 1
        self._comebacks.append((time.monotonic() + RECONNECT, client.kind))

    def _send(self, sock: socket.socket, client: _Client, data: bytes) -> bool:
        try:
            client.sent += sock.send(data)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return True
            self._drop_and_return(sock, client)
            return False
        client.next_send = time.monotonic() + TRICKLE_EVERY
        return True

    def _trickle(self) -> None:
        now = time.monotonic()
        for key in list(self.selector.get_map().values()):
            client: _Client = key.data
            if (
                client.kind == "trickle"
                and client.connected
                and client.sent < TRICKLE_TOTAL
                and now >= client.next_send
            ):
                line = b"X-Pad: " + b"a" * (TRICKLE_STEP - 9) + b"\r\n"
                self._send(key.fileobj, client, line)  # type: ignore[arg-type]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def stream_through(port: int, size: int, result: dict[str, object]) -> None:
    """Send `size` random bytes through the proxy to an echo and read them back."""
    block = os.urandom(1 << 20)
    sent, received = hashlib.sha256(), hashlib.sha256()
    got = 0

    def blocks() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            sent.update(block)
            yield block

    def took(chunk: bytes) -> None:
        nonlocal got
        received.update(chunk)
        got += len(chunk)

    started = time.monotonic()
    send_and_read_back(port, blocks(), took)
    result.update(
        size=got,
        sent=sent.hexdigest(),
        received=received.hexdigest(),
        seconds=time.monotonic() - started,
    )


def listen_overflows() -> int:
    """The kernel's count of connections dropped for a full accept queue, in the
    calling thread's network namespace."""
    with open("/proc/thread-self/net/netstat") as f:
        names, values = [line.split() for line in f if line.startswith("TcpExt:")]
    return int(values[names.index("ListenOverflows")])


def test_slow_clients_cannot_starve_healthz(tmp_path: Path) -> None:
    # In a netns of its own: the figures are those of this test alone.
    with netns.temporary("fp-adminsec"):
        slow_clients_cannot_starve_healthz(tmp_path)


def slow_clients_cannot_starve_healthz(tmp_path: Path) -> None:
    echo = HashingEcho()
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("s", [port], [echo.address])]})
    for path in ("/healthz", "/status", "/metrics"):  # everything imported and warm
        assert proxy.http("GET", path)[0] == 200
    rss_before = rss_kib(proxy.pid)
    overflows = listen_overflows()
    host, admin_port = proxy.admin.rsplit(":", 1)
    attack = SlowClients((host, int(admin_port)), seconds=7)
    attack.start()
    stream: dict[str, object] = {}
    streamer = threading.Thread(target=stream_through, args=(port, 64 << 20, stream))
    try:
        time.sleep(1.5)  # every client has connected once; the first ones are shed
        streamer.start()
        latencies, rss_max = [], rss_before
        for _ in range(30):
            started = time.monotonic()
            assert proxy.http("GET", "/healthz") == (200, b"ok\n")
            latencies.append(time.monotonic() - started)
            rss_max = max(rss_max, rss_kib(proxy.pid))
            time.sleep(0.15)
        streamer.join(60)
        rss_max = max(rss_max, rss_kib(proxy.pid))
        attack.wait()
    finally:
        attack.kill()
    overflows = listen_overflows() - overflows
    median, worst = statistics.median(latencies), max(latencies)
    grown = (rss_max - rss_before) / 1024
    print(
        f"\n{attack.connects} slow connections ({attack.shed} shed; answers"
        f" {dict(attack.answers.most_common(4))}); /healthz median {median * 1000:.1f} ms,"
        f" max {worst * 1000:.1f} ms; RSS {rss_before / 1024:.1f} -> {rss_max / 1024:.1f} MiB;"
        f" stream {stream.get('size', 0)} B in {stream.get('seconds', 0):.2f}s;"
        f" {overflows} accept queue overflows"
    )
    assert attack.connects >= LORIS + TRICKLERS + BLOATERS
    assert attack.shed >= LORIS  # the endpoint does shed them
    # It takes every connection off the accept queue as it comes (the backlog holds
    # a burst): the kernel drops none, neither the attack's nor the probes'.
    assert overflows == 0, f"{overflows} connections dropped from a full accept queue"
    assert median < 0.1, latencies
    assert worst < 2.0, latencies  # generous: the machine is shared and loaded
    assert grown < 20, f"RSS grew by {grown:.1f} MiB"
    assert stream["size"] == 64 << 20 and stream["sent"] == stream["received"]
    health_checks = hashlib.sha256().hexdigest()  # connections that sent nothing
    assert [d for d in echo.digests if d != health_checks] == [stream["sent"]]
    assert proxy.http("GET", "/healthz") == (200, b"ok\n")
    assert "Traceback" not in proxy.log()
    assert proxy.stop() == 0


def test_a_long_reload_does_not_hold_up_healthz(tmp_path: Path) -> None:
    """A reload that opens 15,000 ports runs on the endpoint's worker: /healthz keeps
    answering meanwhile. In a netns of its own, so those ports are surely free, and
    below the ephemeral range (32768-60999), where the backend's and the admin
    endpoint's own ports are."""
    with netns.temporary("fp-adminsec"):
        backend = NamedEchoServer("r")
        config = {"Apps": [app("r", [10000], [backend.address])]}
        proxy = Proxy(tmp_path, config)
        proxy.write_config(full({"Apps": [app("r", ["10000-24999"], [backend.address])]}))
        answer: list[tuple[int, bytes]] = []
        reload = threading.Thread(target=lambda: answer.append(proxy.http("POST", "/reload")))
        started = time.monotonic()
        reload.start()
        latencies = []
        while reload.is_alive():
            probe = time.monotonic()
            assert proxy.http("GET", "/healthz") == (200, b"ok\n")
            latencies.append(time.monotonic() - probe)
            time.sleep(0.02)
        took = time.monotonic() - started
        assert answer == [(200, b'{\n "result": "success",\n "restart_required": []\n}\n')]
        print(
            f"\nreload of 15,000 ports took {took:.2f}s; {len(latencies)} /healthz meanwhile:"
            f" median {statistics.median(latencies) * 1000:.1f} ms,"
            f" max {max(latencies) * 1000:.1f} ms"
        )
        assert len(latencies) >= 5, "the reload was too quick to test anything"
        assert statistics.median(latencies) < 0.1 and max(latencies) < 1.0, latencies
        with socket.create_connection(("127.0.0.1", 24999), timeout=5) as sock:
            assert sock.recv(100) == b"r\n"
        assert proxy.stop() == 0
        backend.close()


def full(config: dict[str, object]) -> dict[str, object]:
    return {"Steering": "ports", "Listen": "127.0.0.1", "Admin": "127.0.0.1:0", **config}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_the_endpoint_waits_and_recovers(tmp_path: Path) -> None:
    """With the descriptor limit reached, accepting pauses (no busy loop, one warning)
    and resumes once descriptors are free again."""
    (port,) = free_ports(1)
    config = {"Apps": [app("tight", [port], ["127.0.0.1:9"], HealthCheck={"Interval": 3600})]}
    proxy = Proxy(tmp_path, config, "--workers", "1", prefix=["prlimit", "--nofile=64:64"])
    host, admin_port = proxy.admin.rsplit(":", 1)
    # From five addresses: one address alone may hold 16 connections, not 64 descriptors.
    held = [
        socket.create_connection((host, int(admin_port)), 5, (f"127.0.0.{1 + i % 5}", 0))
        for i in range(80)
    ]
    for sock in held:
        sock.sendall(b"GET /healthz HTT")  # and stall
    time.sleep(1.5)
    before = cpu_seconds(proxy.pid)
    time.sleep(1.0)
    busy = cpu_seconds(proxy.pid) - before
    assert busy < 0.3, f"the proxy spun: {busy:.2f}s of CPU in 1s"
    for sock in held:
        sock.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            if proxy.http("GET", "/healthz") == (200, b"ok\n"):
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.1)
    log = proxy.log()
    assert log.count("admin: cannot accept: Too many open files") == 1, log
    assert "Traceback" not in log
    assert proxy.stop() == 0
