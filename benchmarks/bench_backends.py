"""The servers behind the proxies, besides iperf3: nginx answering `200` for the HTTP
load (wrk), and a holder that accepts connections and keeps them idle.

    python benchmarks/bench_backends.py PORT    runs a holder on 127.0.0.1:PORT"""

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
    }}
}}
"""


def start_nginx(port: int, workdir: Path) -> Pinned:
    """nginx on HOST:port, pinned to the server's CPU, answering every request with a
    3-byte body; listening when this returns."""
    if shutil.which("nginx") is None:
        raise FileNotFoundError("nginx not installed (scripts/install-bench-deps.sh)")
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
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


if __name__ == "__main__":
    hold(int(sys.argv[1]))
