"""The relay end to end: a real fastproxy process, real sockets on loopback, and
assertions on bytes (checksums) and on which backend answered."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastproxy.backends import NamedEchoServer
from proxyproc import Proxy, app, free_ports
from servers import Backend, HashingEcho, reset


@pytest.fixture
def named_backends() -> Iterator[list[NamedEchoServer]]:
    servers = [NamedEchoServer(f"backend-{i}") for i in range(3)]
    yield servers
    for server in servers:
        server.close()


def ask_name(port: int, payload: bytes = b"ping") -> tuple[str, bytes]:
    """Connect, send, half-close, read all: (backend name, echoed bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = recv_all(sock)
    name, _, echo = data.partition(b"\n")
    return name.decode(), echo


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("mode", ["splice", "copy"])
def test_256mib_each_way_checksums(tmp_path: Path, mode: str) -> None:
    echo = HashingEcho()
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("bulk", [port], [echo.address])]}, "--relay", mode)
    payload = os.urandom(256 << 20)
    sent = hashlib.sha256(payload).hexdigest()
    received = hashlib.sha256()
    with socket.create_connection(("127.0.0.1", port)) as sock:

        def read() -> None:
            while chunk := sock.recv(1 << 20):
                received.update(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        view = memoryview(payload)
        for offset in range(0, len(payload), 1 << 20):
            sock.sendall(view[offset : offset + (1 << 20)])
        sock.shutdown(socket.SHUT_WR)
        reader.join(120)
    assert echo.digests == [sent], "the backend did not receive the client's bytes intact"
    assert received.hexdigest() == sent, "the client did not receive the backend's bytes intact"
    assert proxy.stop() == 0
    echo.backend.close()


def test_500_concurrent_connections(tmp_path: Path, named_backends: list[NamedEchoServer]) -> None:
    ports = free_ports(2)
    targets = [f"127.0.0.1:{b.port}" for b in named_backends]
    proxy = Proxy(tmp_path, {"Apps": [app("many", ports, targets)]})

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


def test_half_close_still_gets_full_reply(tmp_path: Path) -> None:
    """The client shuts its write side; the backend replies only after that EOF."""
    reply = os.urandom(8 << 20)

    def answer_after_eof(conn: socket.socket) -> None:
        request = recv_all(conn)
        conn.sendall(hashlib.sha256(request).digest() + reply)

    backend = Backend(answer_after_eof)
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("half", [port], [backend.address])]})
    request = os.urandom(3 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = recv_all(sock)
    assert data[:32] == hashlib.sha256(request).digest()
    assert hashlib.sha256(data[32:]).digest() == hashlib.sha256(reply).digest()
    assert proxy.stop() == 0
    backend.close()


def test_backend_reset_is_propagated(tmp_path: Path, named_backends) -> None:
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
    proxy = Proxy(tmp_path, config)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"go")
            with pytest.raises(ConnectionResetError):
                while sock.recv(65536):
                    pass
        assert ask_name(port_ok, b"still there") == (named_backends[0].name, b"still there")
    assert proxy.stop() == 0
    resetter.close()


def test_client_reset_is_propagated(tmp_path: Path) -> None:
    seen: list[str] = []

    def wait_for_reset(conn: socket.socket) -> None:
        conn.sendall(b"ready")
        try:
            while conn.recv(65536):
                pass
            seen.append("eof")
        except ConnectionResetError:
            seen.append("reset")

    backend = Backend(wait_for_reset)
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("client-resets", [port], [backend.address])]})
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
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
    proxy = Proxy(tmp_path, {"Apps": [app("leaks", [port], targets)]}, "--workers", "2")

    def burst(count: int, concurrency: int = 20) -> None:
        def worker(n: int) -> None:
            for i in range(n):
                if i % 10 == 9:  # some clients vanish with a reset mid-way
                    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                    sock.sendall(b"bye")
                    reset(sock)
                else:
                    name, echo = ask_name(port, b"x" * 3000)
                    assert echo == b"x" * 3000

        threads = [
            threading.Thread(target=worker, args=(count // concurrency,))
            for _ in range(concurrency)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)

    def settled_fds() -> int:
        time.sleep(0.5)
        return proxy.fd_count()

    burst(1000)  # warm up: pipe pools reach their working size
    baseline = settled_fds()
    burst(5000)
    after = settled_fds()
    print(f"fds: baseline {baseline}, after 5000 connections {after}")
    assert after <= baseline
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
