"""OnTargetDown: close, and `fastproxy target disable --close` (issue 23), end to end:
real backends, a real health check taking a target down, and the client connections
of that target (only those) reset within one check interval."""

from __future__ import annotations

import contextlib
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

from metricsutil import metric
from proxyproc import Proxy, app, free_ports
from servers import Backend

INTERVAL = 0.5
CHECK = {"Interval": INTERVAL, "Timeout": 0.3, "Rise": 1, "Fall": 1}


class Named:
    """A backend that greets with its name and echoes; close() stops accepting (the
    health checks fail) and leaves the established connections alone."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.backend = Backend(self.handle)
        self.address = self.backend.address

    def handle(self, conn: socket.socket) -> None:
        conn.sendall(self.name.encode() + b"\n")
        while data := conn.recv(65536):
            conn.sendall(data)

    def close(self) -> None:
        self.backend.close()


def hold(port: int) -> tuple[socket.socket, str]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    line = b""
    while not line.endswith(b"\n"):
        line += sock.recv(1)
    return sock, line.decode().strip()


def ends(socks: list[socket.socket], limit: float) -> dict[socket.socket, tuple[float, str]]:
    """Watch the sockets for up to `limit` s: when and how each one ended."""
    began = time.monotonic()
    ended: dict[socket.socket, tuple[float, str]] = {}
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ)
        while len(ended) < len(socks) and time.monotonic() < began + limit:
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    how = "unexpected bytes" if sock.recv(65536) else "fin"
                except OSError as err:
                    how = type(err).__name__
                ended[sock] = (time.monotonic() - began, how)
                sel.unregister(sock)
    return ended


def still_open(sock: socket.socket) -> bool:
    sock.sendall(b"echo")
    return sock.recv(4) == b"echo"


def wait_state(proxy: Proxy, app_name: str, address: str, state: str, limit: float = 5) -> None:
    deadline = time.monotonic() + limit
    while True:
        (entry,) = [a for a in proxy.status()["apps"] if a["name"] == app_name]
        (target,) = [t for t in entry["targets"] if t["address"] == address]
        if target["state"] == state:
            return
        assert time.monotonic() < deadline, target
        time.sleep(0.02)


def test_a_target_going_down_closes_its_connections(tmp_path: Path) -> None:
    a, b = Named("a"), Named("b")
    try:
        closing, keeping = free_ports(2)
        targets = [a.address, b.address]
        config = {
            "Workers": 2,
            "Apps": [
                app("closing", [closing], targets, HealthCheck=CHECK, OnTargetDown="close"),
                app("keeping", [keeping], targets, HealthCheck=CHECK),
            ],
        }
        proxy = Proxy(tmp_path, config)
        held = [hold(port) for port in (closing, keeping) for _ in range(10)]
        on_a = [s for s, name in held[:10] if name == "a"]
        kept = [s for s, name in held if s not in on_a]
        assert len(on_a) == 5  # round robin
        a.close()  # its next check is refused
        wait_state(proxy, "closing", a.address, "down")
        down_at = time.monotonic()
        ended = ends(on_a, limit=3 * INTERVAL)
        took = time.monotonic() - down_at
        last = max((t for t, _ in ended.values()), default=0)
        print(f"{len(on_a)} connections closed {last:.2f} s after down")
        assert sorted(how for _, how in ended.values()) == ["ConnectionResetError"] * 5, ended
        # Within one check interval of the down state (and a tick of the wheel).
        assert took < INTERVAL + 0.3, took
        # The other target's, and the keeping app's (a's included), are untouched.
        assert all(still_open(s) for s in kept)
        assert metric(proxy, "fastproxy_closed_total", app="closing", reason="target-down") == 5
        assert metric(proxy, "fastproxy_closed_total", app="keeping", reason="target-down") == 0
        for sock in kept:
            sock.close()
        assert proxy.stop() == 0
    finally:
        a.close()
        b.close()


def test_target_disable_close_from_the_command_line(tmp_path: Path) -> None:
    a, b = Named("a"), Named("b")
    try:
        (port,) = free_ports(1)
        config = {
            "Workers": 2,
            "Apps": [app("web", [port], [a.address, b.address], HealthCheck=CHECK)],
        }
        proxy = Proxy(tmp_path, config)

        def target(*args: str) -> str:
            argv = [sys.executable, "-m", "fastproxy", "target", *args]
            argv += ["--admin-socket", proxy.admin_socket, "--token-file", str(proxy.token_file)]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            return done.stdout

        held = [hold(port) for _ in range(8)]
        on_a = [s for s, name in held if name == "a"]
        on_b = [s for s, name in held if name == "b"]
        # Without --close (OnTargetDown keep or not), disabling keeps them.
        assert "disabled" in target("disable", "web", a.address)
        assert ends(on_a, limit=3 * INTERVAL) == {}
        assert all(still_open(s) for s in on_a)
        target("enable", "web", a.address)
        assert "disabled" in target("disable", "--close", "web", a.address)
        ended = ends(on_a, limit=3 * INTERVAL)
        assert sorted(how for _, how in ended.values()) == ["ConnectionResetError"] * 4, ended
        assert all(still_open(s) for s in on_b)
        assert metric(proxy, "fastproxy_closed_total", app="web", reason="target-down") == 4
        # ?close=1 belongs to disable only; other queries are refused.
        code, body = proxy.http("POST", f"/targets/web/{b.address}/drain?close=1")
        assert code == 400 and b"only disable takes ?close=1" in body, body
        for sock in on_b:
            with contextlib.suppress(OSError):
                sock.close()
        assert proxy.stop() == 0
    finally:
        a.close()
        b.close()
