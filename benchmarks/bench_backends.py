"""The servers behind the proxies, besides iperf3: nginx answering `200` for the HTTP
load (wrk), and a holder that accepts connections and keeps them idle.

    python benchmarks/bench_backends.py PORT             a holder on 127.0.0.1:PORT
    python benchmarks/bench_backends.py slow PORT MS     a slow HTTP target on it"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from bench_procs import HOST, RESET_LINGER, SERVER_CPU, Pinned

# The size sweep: answers of 64 B to 1 MiB, at /bytes/<size>.
SIZES = (64, 1024, 16_384, 65_536, 262_144, 1_048_576)

NGINX_CONFIG = """\
# One process (no master), like the proxies under test: its pid is the one doing the work.
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 32768; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/tmp;
    proxy_temp_path {workdir}/tmp;
    fastcgi_temp_path {workdir}/tmp;
    uwsgi_temp_path {workdir}/tmp;
    scgi_temp_path {workdir}/tmp;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen {host}:{port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
        # The size sweep's answers: files of 64 B to 1 MiB, sent with sendfile. Not
        # tcp_nopush: on Linux nginx turns TCP_NODELAY off to cork, and leaves it off on
        # the keep-alive connection; when the kernel pushes part of an answer early
        # (61,683 + 4,096 bytes of a 64 KiB one), Nagle then holds the 4 KiB tail until
        # the reader's delayed ACK, 40 ms later: a stall of the server's own, seen
        # direct too (results/profiles/response_64k_stall.md).
        location /bytes/ {{ root {workdir}/www; sendfile on; tcp_nopush off; }}
    }}
}}
"""


def start_nginx(port: int, workdir: Path) -> Pinned:
    """nginx on HOST:port, pinned to the server's CPU, answering every request with a
    3-byte body; listening when this returns."""
    if shutil.which("nginx") is None:
        raise FileNotFoundError("nginx not installed (scripts/install-bench-deps.sh)")
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    (workdir / "www" / "bytes").mkdir(parents=True, exist_ok=True)
    for size in SIZES:
        (workdir / "www" / "bytes" / str(size)).write_bytes(os.urandom(size))
    config = workdir / "nginx.conf"
    config.write_text(NGINX_CONFIG.format(workdir=workdir, host=HOST, port=port))
    argv = ["nginx", "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(config)]
    server = Pinned(argv, SERVER_CPU, workdir / "nginx.log")
    try:
        server.wait_listening(port)
    except BaseException:
        server.stop()
        raise
    return server


class Holder:
    """The far end of the idle connections: a process on the server's CPU that accepts
    every connection on HOST:port and keeps it open, reading nothing, until release()
    (SIGUSR1), which closes them all with a reset."""

    def __init__(self, port: int, workdir: Path) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), str(port)]
        self.proc = Pinned(argv, SERVER_CPU, workdir / "holder.log")
        self.proc.wait_listening(port)
        self._baseline = self._fds()

    def _fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def count(self) -> int:
        """Connections held now."""
        return self._fds() - self._baseline

    def release(self, timeout: float = 20) -> None:
        self.proc.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while self.count() > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"holder still holds {self.count()} connections")
            time.sleep(0.01)

    def close(self) -> None:
        self.proc.stop()


def hold(port: int) -> None:
    """The holder process's loop."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.create_server((HOST, port), backlog=4096)
    listener.setblocking(False)
    held: list[socket.socket] = []
    release = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: release.set())
    with selectors.DefaultSelector() as sel:
        sel.register(listener, selectors.EVENT_READ)
        while True:
            sel.select(0.01)
            if release.is_set():
                release.clear()
                for conn in held:
                    abort(conn)
                held.clear()
            while True:
                try:
                    held.append(listener.accept()[0])
                except BlockingIOError:
                    break


def abort(sock: socket.socket) -> None:
    """Close with a reset: SO_LINGER 0 leaves no TIME_WAIT to pile up over 10,000s of
    connections per figure."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_LINGER)
    sock.close()


SLOW_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"


def serve_slowly(port: int, delay: float) -> None:
    """A slow target's loop: each request (keep-alive, one at a time per connection)
    answered `delay` seconds after it arrived."""
    import asyncio

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                await asyncio.sleep(delay)
                writer.write(SLOW_ANSWER)
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(answer, HOST, port, backlog=4096)
        await server.serve_forever()

    asyncio.run(main())


def start_slow(port: int, delay_ms: int, workdir: Path) -> Pinned:
    argv = [sys.executable, str(Path(__file__).resolve()), "slow", str(port), str(delay_ms)]
    server = Pinned(argv, SERVER_CPU, workdir / "slow.log")
    server.wait_listening(port)
    return server


if __name__ == "__main__":
    if sys.argv[1] == "slow":
        serve_slowly(int(sys.argv[2]), int(sys.argv[3]) / 1e3)
    else:
        hold(int(sys.argv[1]))
