"""The port-spread load generator (benchmarks/portspread.c) counts what the many-port
cases report: answers, the ports that answered, and every kind of error, against real
listeners on loopback."""

from __future__ import annotations

import random
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_portspread import Background, run_portspread  # noqa: E402

HOST = "127.0.0.1"


def consecutive(count: int) -> list[socket.socket]:
    """`count` sockets bound to consecutive loopback ports (not listening yet)."""
    for _ in range(100):
        base = random.randrange(20_000, 30_000)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind((HOST, port))
            return socks
        except OSError:
            for s in socks:
                s.close()
    raise RuntimeError("no free run of ports")


def serve(listener: socket.socket, status: bytes, stop: threading.Event) -> None:
    """HTTP answers with `status`, then the server's close (as nginx's Connection: close)."""
    listener.listen(128)
    listener.settimeout(0.05)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nok")


def test_answers_ports_and_errors_are_counted_by_kind() -> None:
    socks = consecutive(3)  # answering, refusing (bound, not listening), answering 500
    stop = threading.Event()
    servers = [
        threading.Thread(target=serve, args=(socks[0], b"200 OK", stop)),
        threading.Thread(target=serve, args=(socks[2], b"500 Oops", stop)),
    ]
    for thread in servers:
        thread.start()
    try:
        first = socks[0].getsockname()[1]
        figures, out = run_portspread(first, 3, connections=3, seconds=0.3, proxy_pid=None)
    finally:
        stop.set()
        for thread in servers:
            thread.join()
        for s in socks:
            s.close()
    assert figures["answered"] > 0, out
    assert figures["ports_hit"] == 1, out  # only the 200 port: a 500 is no answer
    assert figures["refused"] > 0 and figures["bad_status"] > 0, out
    assert figures["errors"] == figures["refused"] + figures["bad_status"], out
    assert 0 < figures["client_cpu_share"] <= 1.5, out


def test_a_background_load_stops_when_told_and_rates_its_real_window() -> None:
    (listener,) = consecutive(1)
    stop = threading.Event()
    server = threading.Thread(target=serve, args=(listener, b"200 OK", stop))
    server.start()
    try:
        load = Background(listener.getsockname()[1], 1, connections=2, limit=60)
        time.sleep(0.4)
        figures, out = load.stop()
    finally:
        stop.set()
        server.join()
        listener.close()
    assert 0.3 < figures["seconds"] < 5, out  # SIGTERM ended it, not its 60 s limit
    assert figures["errors"] == 0 and figures["answered"] > 0, out
    assert figures["rate"] == pytest.approx(figures["answered"] / figures["seconds"], rel=0.01)
