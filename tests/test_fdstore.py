"""A restart under systemd refuses no client (SPEC §13): the listening sockets go to the
service manager's fd store and come back at the next start, so clients that connect while
no process runs wait in the kept sockets' backlog and are served by the next process.
Socket activation (a .socket unit's sockets in LISTEN_FDS) works the same way."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from fakesystemd import FakeSystemd
from fastproxy.backends import NamedEchoServer
from proxyproc import Proxy, app, free_ports


class Client(threading.Thread):
    """Connects (the kernel completes the handshake into the backlog whether or not a
    process accepts), then waits up to 30 s for the backend's name and its echo."""

    def __init__(self, port: int, host: str, index: int) -> None:
        super().__init__()
        self.port, self.host, self.index = port, host, index
        self.result = "not run"
        self.start()

    def run(self) -> None:
        payload = f"client {self.index}".encode()
        try:
            with socket.create_connection((self.host, self.port), timeout=30) as sock:
                sock.sendall(payload)
                data = b""
                while not data.endswith(payload):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            self.result = "served" if data == b"kept\n" + payload else f"got {data!r}"
        except ConnectionRefusedError:
            self.result = "refused"
        except OSError as exc:
            self.result = repr(exc)


def wait_stored(fake: FakeSystemd, names: int) -> None:
    deadline = time.monotonic() + 10
    while len(fake.store) < names:
        assert time.monotonic() < deadline, (fake.store, fake.messages)
        fake.receive()
        time.sleep(0.02)


def test_a_restart_with_the_fd_store_refuses_no_client(
    tmp_path: Path, steering: dict[str, str]
) -> None:
    backend = NamedEchoServer("kept")
    host = "127.0.0.1"
    ports = free_ports(4)
    (admin_port,) = free_ports(1)
    config = {
        **steering,
        "Apps": [app("kept", ports, [backend.address])],
        "DrainTimeout": 1,
        "Admin": f"127.0.0.1:{admin_port}",
    }
    fake = FakeSystemd(tmp_path)
    try:
        first = fake.start(tmp_path / "1", config)
        assert first.steering == steering["Steering"]
        # ports: one socket per port, and the admin's; bpf: the steered one and the admin's.
        wait_stored(fake, 5 if first.steering == "ports" else 2)
        assert any(name.startswith("fp-admin-") for name in fake.store), fake.store

        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(10) == 0
        # No process runs: these clients connect now and are answered after the restart.
        waiting = [Client(ports[i % len(ports)], host, i) for i in range(40)]
        time.sleep(0.5)
        assert all(c.is_alive() for c in waiting), [c.result for c in waiting]

        second = fake.start(tmp_path / "2", config)
        assert second.steering == steering["Steering"]
        assert "systemd passed" in second.log(), second.log()
        for client in waiting:
            client.join(40)
        assert [c.result for c in waiting] == ["served"] * 40
        # The adopted sockets serve on, and the admin endpoint is the same socket.
        after = [Client(port, host, 100 + i) for i, port in enumerate(ports)]
        for client in after:
            client.join(30)
        assert [c.result for c in after] == ["served"] * len(ports)
        assert second.admin == first.admin == f"127.0.0.1:{admin_port}"
        assert second.stop() == 0
    finally:
        fake.close()


def test_socket_activation_serves_clients_that_came_before_the_process(tmp_path: Path) -> None:
    """A .socket unit's sockets, under the names it chose, known by their port."""
    backend = NamedEchoServer("kept")
    ports = free_ports(2)
    listeners = []
    for port in ports:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        listeners.append(sock)
    early = [Client(ports[i % 2], "127.0.0.1", i) for i in range(10)]
    fake = FakeSystemd(tmp_path)
    try:
        fake.store = {f"fastproxy.socket{i}": s.fileno() for i, s in enumerate(listeners)}
        proxy = fake.start(tmp_path / "p", {"Apps": [app("kept", ports, [backend.address])]})
        for client in early:
            client.join(30)
        assert [c.result for c in early] == ["served"] * 10
        assert proxy.stop() == 0
    finally:
        fake.store = {}
        fake.close()
        for sock in listeners:
            sock.close()


def test_a_second_instance_on_the_same_ports_fails_naming_the_first(
    tmp_path: Path, steering: dict[str, str]
) -> None:
    backend = NamedEchoServer("first")
    ports = free_ports(2)
    config = {**steering, "Apps": [app("a", ports, [backend.address])]}
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    first = Proxy(tmp_path / "1", config)
    for mode in ("auto", "ports", steering["Steering"]):
        with pytest.raises(RuntimeError, match="fastproxy exited"):
            Proxy(tmp_path / "2", {**config, "Steering": mode})
        log = (tmp_path / "2" / "fastproxy.log").read_text()
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, log
        assert f"pid {first.pid}" in errors[0], log
    assert first.stop() == 0
