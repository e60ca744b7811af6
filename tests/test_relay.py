"""The relay end to end: a real fastproxy process, real sockets on loopback, and
assertions on bytes (checksums) and on which backend answered."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastproxy.backends import NamedEchoServer
from proxyproc import Proxy, app, free_ports
from servers import Backend, HashingEcho, reset, send_and_read_back, talk


@pytest.fixture
def named_backends() -> Iterator[list[NamedEchoServer]]:
    servers = [NamedEchoServer(f"backend-{i}") for i in range(3)]
    yield servers
    for server in servers:
        server.close()


def ask_name(port: int, payload: bytes = b"ping") -> tuple[str, bytes]:
    """Connect, send, half-close, read all: (backend name, echoed bytes)."""
    name, _, echo = talk(port, payload).partition(b"\n")
    return name.decode(), echo


# Active health checks connect to the targets too: a backend that records what each
# connection did must tell them apart from the relayed ones.
CHECKS = {"Interval": 0.05}


def relay_proxy(tmp_path: Path, config: dict, mode: str, *args: str) -> Proxy:
    return Proxy(tmp_path, config, "--relay", mode, *args)


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def megabytes(payload: bytes) -> Iterator[memoryview]:
    view = memoryview(payload)
    return (view[offset : offset + (1 << 20)] for offset in range(0, len(payload), 1 << 20))


@pytest.mark.parametrize("mode", ["splice", "copy"])
def test_256mib_each_way_checksums(tmp_path: Path, mode: str) -> None:
    echo = HashingEcho()
    (port,) = free_ports(1)
    proxy = relay_proxy(tmp_path, {"Apps": [app("bulk", [port], [echo.address])]}, mode)
    payload = os.urandom(256 << 20)
    sent = hashlib.sha256(payload).hexdigest()
    received = hashlib.sha256()
    send_and_read_back(port, megabytes(payload), received.update)
    # Health checks connect and leave without a byte: only the client's stream counts.
    streams = [d for d in echo.digests if d != hashlib.sha256(b"").hexdigest()]
    assert streams == [sent], "the backend did not receive the client's bytes intact"
    assert received.hexdigest() == sent, "the client did not receive the backend's bytes intact"
    assert proxy.stop() == 0
    echo.backend.close()


@pytest.mark.parametrize("mode", ["splice", "copy"])
def test_small_and_bulk_messages_alternate_in_order(tmp_path: Path, mode: str) -> None:
    """Splice mode reads small messages with recv() into a buffer and moves a direction
    to the pipe once it carries bulk, and back: across every switch, with a small
    message queued right behind a bulk one, the bytes must stay intact and in order."""
    echo = HashingEcho()
    (port,) = free_ports(1)
    proxy = relay_proxy(tmp_path, {"Apps": [app("mixed", [port], [echo.address])]}, mode)
    sent = hashlib.sha256()
    received = hashlib.sha256()
    got = 0
    arrived = threading.Condition()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:

        def read() -> None:
            nonlocal got
            while chunk := sock.recv(1 << 20):
                received.update(chunk)
                with arrived:
                    got += len(chunk)
                    arrived.notify_all()

        def send_and_wait(payload: bytes, total: int) -> int:
            sent.update(payload)
            sock.sendall(payload)
            total += len(payload)
            with arrived:
                assert arrived.wait_for(lambda: got == total, 30), f"{got} of {total} bytes back"
            return total

        reader = threading.Thread(target=read)
        reader.start()
        total = 0
        for round_ in range(4):
            for size in (1, 300, 4000):
                total = send_and_wait(os.urandom(size), total)  # request / response
            bulk = os.urandom((1 << 20) + 12345 * round_)
            total = send_and_wait(bulk + os.urandom(700), total)  # small right behind bulk
        sock.shutdown(socket.SHUT_WR)
        reader.join(30)
    streams = [d for d in echo.digests if d != hashlib.sha256(b"").hexdigest()]
    assert streams == [sent.hexdigest()], "the backend did not receive the bytes in order"
    assert received.hexdigest() == sent.hexdigest(), "the client did not get the bytes in order"
    assert proxy.stop() == 0
    echo.backend.close()


def test_bulk_flow_does_not_starve_a_small_request(tmp_path: Path) -> None:
    """One worker, one bulk stream each way at full speed: a small request on another
    connection of the same worker must still be answered promptly (each wake-up
    moves a bounded number of bytes per connection, then serves the others)."""
    echo = HashingEcho()
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("busy", [port], [echo.address])]}, "--workers", "1")
    stop = threading.Event()
    chunk = os.urandom(1 << 20)
    bulk = socket.create_connection(("127.0.0.1", port), timeout=30)

    def push() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                bulk.sendall(chunk)

    def pull() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set() and bulk.recv(1 << 20):
                pass

    threads = [threading.Thread(target=push), threading.Thread(target=pull)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        worst = 0.0
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as small:
                started = time.monotonic()
                small.sendall(b"ping")
                assert small.recv(16) == b"ping"
                worst = max(worst, time.monotonic() - started)
        # Generous for a loaded machine; a worker stuck in one flow takes the whole run.
        assert worst < 1.0, f"a small request waited {worst:.2f}s behind a bulk flow"
    finally:
        stop.set()
        bulk.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(30)
        bulk.close()
    assert proxy.stop() == 0
    echo.backend.close()


@pytest.mark.parametrize("mode", ["splice"])
def test_500_concurrent_connections(
    tmp_path: Path, named_backends: list[NamedEchoServer], mode: str
) -> None:
    ports = free_ports(2)
    targets = [f"127.0.0.1:{b.port}" for b in named_backends]
    proxy = relay_proxy(tmp_path, {"Apps": [app("many", ports, targets)]}, mode)

    async def one(i: int) -> tuple[str, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[i % 2])
        return reader, writer  # type: ignore[return-value]

    async def exchange(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        payload = hashlib.sha256(str(i).encode()).digest() * 512  # 16 KiB, distinct
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        data = await reader.read()
        writer.close()
        name, _, echo = data.partition(b"\n")
        return name.decode(), echo == payload

    async def main() -> list[tuple[str, bool]]:
        # All 500 are open at once before any of them exchanges data.
        conns = await asyncio.gather(*(one(i) for i in range(500)))
        return await asyncio.wait_for(
            asyncio.gather(*(exchange(i, r, w) for i, (r, w) in enumerate(conns))), 60
        )

    results = asyncio.run(main())
    assert all(ok for _, ok in results), "some connection got wrong bytes back"
    assert Counter(name for name, _ in results).keys() == {b.name for b in named_backends}
    assert proxy.stop() == 0


def test_round_robin_lands_evenly(tmp_path: Path, named_backends: list[NamedEchoServer]) -> None:
    (port,) = free_ports(1)
    targets = [f"127.0.0.1:{b.port}" for b in named_backends]
    proxy = Proxy(tmp_path, {"Apps": [app("rr", [port], targets)]}, "--workers", "2")
    landed = Counter(ask_name(port)[0] for _ in range(300))
    assert landed == {b.name: 100 for b in named_backends}
    assert proxy.stop() == 0


def test_refused_and_unresolvable_targets_are_skipped(
    tmp_path: Path, named_backends: list[NamedEchoServer]
) -> None:
    port, refused = free_ports(2)
    live = named_backends[0]
    targets = [f"127.0.0.1:{refused}", "bad.target.for.testing:6003", f"127.0.0.1:{live.port}"]
    proxy = Proxy(tmp_path, {"Apps": [app("six-thousand", [port], targets)]})
    for i in range(60):
        payload = f"hello {i}".encode()
        assert ask_name(port, payload) == (live.name, payload)
    assert proxy.stop() == 0


def test_all_targets_down_closes_client_promptly(tmp_path: Path) -> None:
    port, dead1, dead2 = free_ports(3)
    targets = [f"127.0.0.1:{dead1}", f"127.0.0.1:{dead2}", "bad.target.for.testing:6003"]
    proxy = Proxy(tmp_path, {"Apps": [app("down", [port], targets)]})
    for _ in range(5):
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"anyone there?")
            try:
                data = sock.recv(100)
            except ConnectionResetError:
                data = b""
        assert data == b""
        assert time.monotonic() - started < 1.0
    assert proxy.stop() == 0


@pytest.mark.parametrize("mode", ["splice"])
def test_half_close_still_gets_full_reply(tmp_path: Path, mode: str) -> None:
    """The client shuts its write side; the backend replies only after that EOF."""
    reply = os.urandom(8 << 20)

    def answer_after_eof(conn: socket.socket) -> None:
        request = recv_all(conn)
        conn.sendall(hashlib.sha256(request).digest() + reply)

    backend = Backend(answer_after_eof)
    (port,) = free_ports(1)
    proxy = relay_proxy(tmp_path, {"Apps": [app("half", [port], [backend.address])]}, mode)
    request = os.urandom(3 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = recv_all(sock)
    assert data[:32] == hashlib.sha256(request).digest()
    assert hashlib.sha256(data[32:]).digest() == hashlib.sha256(reply).digest()
    assert proxy.stop() == 0
    backend.close()


@pytest.mark.parametrize("mode", ["splice"])
def test_backend_reset_is_propagated(tmp_path: Path, named_backends, mode: str) -> None:
    def reset_mid_stream(conn: socket.socket) -> None:
        conn.sendall(b"x" * 100_000)
        conn.recv(10)
        time.sleep(0.1)
        reset(conn)

    resetter = Backend(reset_mid_stream)
    port, port_ok = free_ports(2)
    config = {
        "Apps": [
            app("resets", [port], [resetter.address]),
            app("fine", [port_ok], [f"127.0.0.1:{named_backends[0].port}"]),
        ]
    }
    proxy = relay_proxy(tmp_path, config, mode)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"go")
            with pytest.raises(ConnectionResetError):
                while sock.recv(65536):
                    pass
        assert ask_name(port_ok, b"still there") == (named_backends[0].name, b"still there")
    assert proxy.stop() == 0
    resetter.close()


@pytest.mark.parametrize("mode", ["splice"])
def test_client_reset_is_propagated(tmp_path: Path, mode: str) -> None:
    seen: list[str] = []

    def wait_for_reset(conn: socket.socket) -> None:
        # A health check's connect leaves without a byte: its FIN is no client's.
        if conn.recv(5, socket.MSG_WAITALL) != b"hello":
            return
        conn.sendall(b"ready")
        try:
            while conn.recv(65536):
                pass
            seen.append("eof")
        except ConnectionResetError:
            seen.append("reset")

    backend = Backend(wait_for_reset)
    (port,) = free_ports(1)
    # Checks every 50 ms, one passed before the client connects: the backend meets them
    # on every run, as it may with the default interval.
    config = {"Apps": [app("client-resets", [port], [backend.address], HealthCheck=CHECKS)]}
    proxy = relay_proxy(tmp_path, config, mode)
    proxy.wait_for_a_passed_check()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"hello")
    assert sock.recv(5) == b"ready"
    reset(sock)
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen == ["reset"]
    assert proxy.stop() == 0
    backend.close()


def test_no_fd_or_pipe_leak_after_5000_connections(
    tmp_path: Path, named_backends: list[NamedEchoServer]
) -> None:
    port, refused = free_ports(2)
    targets = [f"127.0.0.1:{refused}"] + [f"127.0.0.1:{b.port}" for b in named_backends]
    # Active checks would open sockets of their own now and then: keep them out.
    quiet = {"Interval": 3600, "Timeout": 1}
    proxy = Proxy(
        tmp_path, {"Apps": [app("leaks", [port], targets, HealthCheck=quiet)]}, "--workers", "2"
    )

    def burst(clients: int, concurrency: int = 20) -> None:
        """`count` clients, every tenth resetting mid-way, the others exchanging 3000
        bytes: each must have happened (a client thread's failure fails the test, so
        "no leak" cannot be "no traffic")."""
        done: Counter[str] = Counter()
        errors: list[str] = []
        lock = threading.Lock()

        def count(kind: str) -> None:
            with lock:
                done[kind] += 1

        def worker(n: int) -> None:
            try:
                for i in range(n):
                    if i % 10 == 9:  # some clients vanish with a reset mid-way
                        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                        sock.sendall(b"bye")
                        reset(sock)
                        count("reset")
                    else:
                        name, echo = ask_name(port, b"x" * 3000)
                        assert name.startswith("backend-") and echo == b"x" * 3000, name
                        count("exchanged")
            except (AssertionError, OSError) as exc:
                errors.append(repr(exc))

        threads = [
            threading.Thread(target=worker, args=(clients // concurrency,))
            for _ in range(concurrency)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a client thread hung"
        assert errors == [], errors[:5]
        assert done == {"exchanged": clients * 9 // 10, "reset": clients // 10}, done

    def settled_fds() -> Counter[str]:
        """Open descriptors of the proxy by kind (socket, pipe, anon_inode, ...)."""
        time.sleep(0.5)
        kinds: Counter[str] = Counter()
        for fd in os.listdir(f"/proc/{proxy.pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                kinds[os.readlink(f"/proc/{proxy.pid}/fd/{fd}").split(":")[0]] += 1
        return kinds

    burst(1000)  # warm up: pipe pools reach their working size
    baseline = settled_fds()
    burst(5000)
    after = settled_fds()
    print(f"fds: baseline {dict(baseline)}, after 5000 connections {dict(after)}")
    assert after["socket"] == baseline["socket"]  # every client and target socket closed
    # Idle pipes stay pooled for reuse, up to what was in flight at once (20 clients,
    # two directions, two ends): a leak would be thousands.
    assert after["pipe"] <= baseline["pipe"] + 80
    assert sum(after.values()) - after["pipe"] == sum(baseline.values()) - baseline["pipe"]
    assert proxy.stop() == 0


def test_sigint_stops_with_exit_0(tmp_path: Path, named_backends) -> None:
    import signal

    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("sig", [port], [f"127.0.0.1:{named_backends[0].port}"])]})
    ask_name(port)
    proxy.proc.send_signal(signal.SIGINT)
    assert proxy.stop() == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


@pytest.mark.parametrize("mode", ["splice"])
def test_idle_timeout_closes_silent_connections(tmp_path: Path, named_backends, mode: str) -> None:
    (port,) = free_ports(1)
    target = f"127.0.0.1:{named_backends[0].port}"
    proxy = relay_proxy(tmp_path, {"Apps": [app("idle", [port], [target], IdleTimeout=1)]}, mode)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert sock.recv(100) == b"backend-0\n"
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the proxy, not by us or the backend
        waited = time.monotonic() - started
    assert 0.9 < waited < 3.0
    assert proxy.stop() == 0


def test_idle_timeout_spares_active_connections(tmp_path: Path) -> None:
    """Activity only stores a time; the idle timer, when it comes round, must see it
    and wait again rather than close a connection that kept talking."""
    echo = HashingEcho()
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("busy", [port], [echo.address], IdleTimeout=1)]})
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as active,
        socket.create_connection(("127.0.0.1", port), timeout=10) as silent,
    ):
        started = time.monotonic()
        while time.monotonic() - started < 3.0:
            active.sendall(b"x")
            assert active.recv(10) == b"x", "an active connection was closed as idle"
            time.sleep(0.3)
        assert silent.recv(10) == b""  # the silent one was closed meanwhile
    assert proxy.stop() == 0
    echo.backend.close()


def test_idle_timeout_fires_on_time(tmp_path: Path) -> None:
    """IdleTimeout 0.3 s closes an idle connection 0.3-0.5 s after its last byte (the
    worker's sleep used to ignore the timer wheel: it closed after about 1 s). The
    last byte moved between the client's send and its receipt of the echo, so the
    close is timed from the send for the lower bound and from the receipt for the
    upper one: both bounds are then at least as strict as the relay's own."""
    echo = HashingEcho()
    (port,) = free_ports(1)
    quiet = {"Interval": 3600, "Timeout": 1}
    config = {"Apps": [app("idle", [port], [echo.address], IdleTimeout=0.3, HealthCheck=quiet)]}
    proxy = Proxy(tmp_path, config)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sent = time.monotonic()
            sock.sendall(b"x")
            assert sock.recv(10) == b"x"
            received = time.monotonic()
            assert sock.recv(10) == b""  # closed by the proxy
            closed = time.monotonic()
        print(f"idle close: {closed - sent:.3f}s after the send, {closed - received:.3f}s after")
        assert closed - sent >= 0.3, f"closed {closed - sent:.3f}s after the last byte"
        # 0.3 s rounded up to the next 0.1 s tick, and room for a busy CI machine; a worker
        # sleeping a whole second between wake-ups would close at about 1.3 s.
        assert closed - received <= 0.7, f"closed {closed - received:.3f}s after the last byte"
    assert proxy.stop() == 0
    echo.backend.close()


def test_preface_timeout_fires_on_time(tmp_path: Path) -> None:
    """A client that starts its PROXY header (or its ClientHello) and never finishes
    is closed 5.0-5.2 s after it connected (5.45 allowed: a busy CI machine). Its first
    bytes come 0.5 s in, so a worker sleeping a whole second between wake-ups woke at
    x.5 s: 5.5 s."""
    proxy_port, sni_port, target = free_ports(3)
    config = {
        "Apps": [
            app("behind", [proxy_port], [f"127.0.0.1:{target}"], AcceptProxyProtocol=True),
            app("named", [sni_port], [f"127.0.0.1:{target}"], ServerNames=["a.example"]),
        ]
    }
    proxy = Proxy(tmp_path, config)
    clients = []
    for port, start in ((proxy_port, b"PROXY TCP4 192.0.2.1 "), (sni_port, b"\x16\x03\x01\x02")):
        before = time.monotonic()
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        clients.append((sock, start, before, time.monotonic()))
    time.sleep(0.5)
    for sock, start, _, _ in clients:
        sock.sendall(start)
    poller = select.poll()
    for sock, _, _, _ in clients:
        poller.register(sock, select.POLLIN)
    ended: dict[int, float] = {}
    while len(ended) < len(clients):
        events = poller.poll(10_000)
        assert events, "not closed after 10 s more"
        for fd, _ in events:
            ended[fd] = time.monotonic()
            poller.unregister(fd)
    for sock, _, before, connected in clients:
        closed = ended[sock.fileno()]
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(10) == b""
        sock.close()
        print(f"preface close: {closed - before:.3f}s after the connect")
        # Timed from before the connect for the lower bound, from after it for the upper.
        assert closed - before >= 5.0, f"closed {closed - before:.3f}s after the connect"
        assert closed - connected <= 5.45, f"closed {closed - connected:.3f}s after the connect"
    assert proxy.stop() == 0


def test_connect_timeout_gives_up_on_a_silent_target(tmp_path: Path) -> None:
    """A target whose accept queue is full drops SYNs: the connect hangs until the
    connect timeout on the worker's timer wheel gives up on it."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    fillers = []
    for _ in range(3):  # fill the accept queue: later SYNs are dropped
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(silent.getsockname())
        fillers.append(filler)
    target = f"127.0.0.1:{silent.getsockname()[1]}"
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("hang", [port], [target], ConnectTimeout=1)]})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(10) == b""
        waited = time.monotonic() - started
    assert 0.8 < waited < 3.0, f"gave up after {waited:.2f}s"
    assert proxy.stop() == 0
    for filler in fillers:
        filler.close()
    silent.close()


def test_max_connections_turns_away_the_extra_client(tmp_path: Path, named_backends) -> None:
    (port,) = free_ports(1)
    target = f"127.0.0.1:{named_backends[0].port}"
    proxy = Proxy(tmp_path, {"Apps": [app("capped", [port], [target], MaxConnections=2)]})
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    for sock in held:
        assert sock.recv(100) == b"backend-0\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
        assert extra.recv(100) == b""
    held[0].close()
    time.sleep(0.2)
    assert ask_name(port, b"room again") == ("backend-0", b"room again")
    held[1].close()
    assert proxy.stop() == 0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("mode", ["splice", "copy"])
def test_slow_reader_applies_backpressure(tmp_path: Path, mode: str) -> None:
    """A backend that stops reading: the client soon cannot send more, and the
    proxy's memory does not grow with what the client tries to send."""
    release = threading.Event()

    def stalled(conn: socket.socket) -> None:
        conn.recv(1)
        release.wait(30)
        while conn.recv(1 << 20):
            pass

    backend = Backend(stalled)
    (port,) = free_ports(1)
    proxy = relay_proxy(tmp_path, {"Apps": [app("slow", [port], [backend.address])]}, mode)
    before = _rss_kib(proxy.pid)
    chunk = b"z" * (1 << 20)
    sent = 0
    # Enough to fail, not so much that a relay without backpressure fills kernel memory.
    cap = 128 << 20
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(1.0)
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline and sent < cap:
                sent += sock.send(chunk)
        except TimeoutError:
            pass  # blocked: backpressure reached the client
        grown = _rss_kib(proxy.pid) - before
        release.set()
    print(f"backpressure: {sent} bytes accepted, proxy RSS grew {grown} KiB")
    assert sent < 64 << 20, f"{sent} bytes accepted with the backend not reading"
    assert grown < 8 << 10, f"proxy RSS grew by {grown} KiB"
    assert proxy.stop() == 0
    backend.close()


@pytest.mark.parametrize("mode", ["splice"])
def test_counters_are_exact_in_process(named_backends, mode: str) -> None:
    """The relay API itself: per-app and per-target counters equal the traffic."""
    from fastproxy import _relay

    relay = _relay.Relay(workers=2)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    (dead,) = free_ports(1)
    relay.set_app(
        0,
        app_slot=0,
        targets=[
            (socket.AF_INET, "127.0.0.1", dead, 1, _relay.TARGET_UP, 1, False),
            (socket.AF_INET, "127.0.0.1", named_backends[0].port, 2, _relay.TARGET_UP, 1, False),
        ],
    )
    relay.set_port(port, 0)
    relay.add_listener(listener.fileno(), port)
    relay.start()
    try:
        for i in range(10):
            assert ask_name(port, b"y" * (1000 + i)) == ("backend-0", b"y" * (1000 + i))
        time.sleep(0.2)
        app_stats = dict(zip(_relay.STATS_FIELDS, relay.stats(0)))
        dead_stats = dict(zip(_relay.STATS_FIELDS, relay.stats(1)))
        live_stats = dict(zip(_relay.STATS_FIELDS, relay.stats(2)))
        sent = sum(1000 + i for i in range(10))
        answered = sent + 10 * len(b"backend-0\n")
        assert app_stats["connections"] == 10 and app_stats["active"] == 0
        assert app_stats["bytes_in"] == sent and app_stats["bytes_out"] == answered
        assert live_stats["bytes_in"] == sent and live_stats["bytes_out"] == answered
        assert live_stats["connections"] == 10
        # Round robin starts half of the clients on the dead target; each fails over.
        assert dead_stats["connect_failures"] == 5 and dead_stats["connections"] == 0
        assert relay.connections() == 0
    finally:
        relay.remove_listener(listener.fileno())
        listener.close()
        relay.stop()


@pytest.mark.parametrize("mode", ["splice", "copy"])
def test_data_and_fin_arriving_together(tmp_path: Path, mode: str, named_backends) -> None:
    """A FIN that lands in the same read as the last bytes raises no later event:
    the relay must still pass it on (both modes, many times over)."""
    (port,) = free_ports(1)
    target = f"127.0.0.1:{named_backends[0].port}"
    proxy = relay_proxy(tmp_path, {"Apps": [app("fin", [port], [target])]}, mode)
    for i in range(200):
        payload = os.urandom(1 + i * 97)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b"backend-0\n" + payload
    assert proxy.stop() == 0


@pytest.mark.parametrize("mode", ["splice", "copy"])
def test_urgent_data_neither_stalls_nor_truncates(tmp_path: Path, mode: str) -> None:
    """TCP urgent data: splice stops at the mark, so the relay steps over it; the
    stream goes on (the out-of-band byte itself is dropped, as by most proxies)."""
    echo = HashingEcho()
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("oob", [port], [echo.address])]}, "--relay", mode)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"A" * 10)
        time.sleep(0.05)
        sock.send(b"U", socket.MSG_OOB)
        time.sleep(0.05)
        sock.sendall(b"B" * 10)
        got = b""
        while len(got) < 20:
            got += sock.recv(100)  # a stall would time out here
        sock.shutdown(socket.SHUT_WR)
        got += recv_all(sock)
    assert got == b"A" * 10 + b"B" * 10
    assert proxy.stop() == 0
    echo.backend.close()


class StreamRecorder:
    """A target that reads every connection to its end (an ordinary reader: no
    SO_OOBINLINE) and records what it got and how it ended: "eof" or the error."""

    def __init__(self) -> None:
        self.streams: list[tuple[bytes, str]] = []
        self.backend = Backend(self.handle)
        self.address = self.backend.address

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        got = bytearray()
        try:
            while chunk := conn.recv(1 << 20):
                got += chunk
            end = "eof"
        except OSError as exc:
            end = type(exc).__name__
        if got or end != "eof":  # not a health check's connect
            self.streams.append((bytes(got), end))

    def wait(self, count: int) -> list[tuple[bytes, str]]:
        deadline = time.monotonic() + 10
        while len(self.streams) < count:
            assert time.monotonic() < deadline, f"{len(self.streams)} of {count} streams ended"
            time.sleep(0.01)
        return self.streams


def urgent_in_the_middle(port: int) -> None:
    """300,000 bytes, one urgent byte, 50,000 more and the FIN, back to back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"a" * 300_000)
        sock.send(b"U", socket.MSG_OOB)
        sock.sendall(b"b" * 50_000)
        sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):  # a truncating relay resets the rest
            sock.recv(1)  # until the target has all of it and closes


@pytest.mark.parametrize("mode", ["splice", "copy"])
def test_urgent_byte_before_fin_does_not_truncate(tmp_path: Path, mode: str) -> None:
    """splice() stops at an urgent mark and returns 0 there once the FIN has come,
    with 50,000 bytes still after it: the relay must not take that for the end. The
    target gets what it gets on a direct connection (the urgent byte is out of band
    for an ordinary reader), then the FIN."""
    target = StreamRecorder()
    (port,) = free_ports(1)
    quiet = {"Interval": 3600, "Timeout": 1}
    proxy = relay_proxy(
        tmp_path, {"Apps": [app("urgent", [port], [target.address], HealthCheck=quiet)]}, mode
    )
    urgent_in_the_middle(target.backend.port)
    [direct] = target.wait(1)
    assert direct == (b"a" * 300_000 + b"b" * 50_000, "eof")
    trials = 20
    for _ in range(trials):
        urgent_in_the_middle(port)
    relayed = target.wait(1 + trials)[1:]
    wrong = [(len(got), end) for got, end in relayed if (got, end) != direct]
    assert not wrong, f"{len(wrong)} of {trials} streams differ from direct: {wrong[:3]}"
    assert proxy.stop() == 0
    target.backend.close()


@pytest.mark.parametrize("mode", ["splice"])
def test_reset_after_half_close_is_propagated(tmp_path: Path, mode: str) -> None:
    """The client sent its FIN, then resets while the backend is still quiet: the
    backend must learn of it without having to write first."""
    outcome: list[str] = []

    def patient(conn: socket.socket) -> None:
        if recv_all(conn) != b"question":  # up to the client's FIN
            return  # a health check's connect

        # After a FIN, recv() keeps saying EOF even once a reset came: the socket's
        # state tells (a reset closes it: POLLHUP and POLLERR).
        poller = select.poll()
        poller.register(conn, select.POLLERR | select.POLLHUP)
        events = poller.poll(5000)
        error = conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        # A reset in CLOSE_WAIT is reported as EPIPE, elsewhere as ECONNRESET.
        reset_seen = events and error in (errno.ECONNRESET, errno.EPIPE)
        outcome.append("reset" if reset_seen else f"{events} {error}")

    backend = Backend(patient)
    (port,) = free_ports(1)
    proxy = relay_proxy(tmp_path, {"Apps": [app("hc", [port], [backend.address])]}, mode)
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"question")
    sock.shutdown(socket.SHUT_WR)
    time.sleep(0.3)
    reset(sock)
    deadline = time.monotonic() + 6
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.02)
    assert outcome == ["reset"]
    assert proxy.stop() == 0
    backend.close()


def test_out_of_descriptors_sheds_clients_and_recovers(tmp_path: Path, named_backends) -> None:
    """With the descriptor limit reached, new clients are turned away at once (not
    left to spin the listener), connections already open stay fast, and when
    descriptors free up new clients are served again."""
    (port,) = free_ports(1)
    target = f"127.0.0.1:{named_backends[0].port}"
    config = {"Apps": [app("tight", [port], [target], HealthCheck={"Interval": 3600})]}
    proxy = Proxy(tmp_path, config, "--workers", "1", prefix=["prlimit", "--nofile=96:96"])
    held = []
    shed = 0
    for _ in range(60):
        try:
            # Shed clients get a reset, which may already fail the connect.
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionResetError:
            shed += 1
            continue
        try:
            if sock.recv(100) == b"backend-0\n":
                held.append(sock)
                continue
        except ConnectionResetError:
            pass
        shed += 1
        sock.close()
    assert shed > 0 and len(held) > 10
    # An established connection still answers promptly.
    started = time.monotonic()
    held[0].sendall(b"ping")
    assert held[0].recv(10) == b"ping"
    assert time.monotonic() - started < 1.0
    for sock in held:
        sock.close()
    deadline = time.monotonic() + 5
    while True:  # the proxy closes its ends as it sees the clients go
        try:
            assert ask_name(port, b"after") == ("backend-0", b"after")
            break
        except ConnectionResetError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert proxy.stop() == 0
