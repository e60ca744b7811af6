"""Hot reload and zero-downtime upgrade under load: no established connection is
cut and no new connection is refused."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fastproxy.backends import NamedEchoServer
from proxyproc import ROOT, Proxy, app, free_ports
from servers import HashingEcho


class Stream:
    """A long-lived connection through the proxy, pushing data and reading the
    echo back in the background; check() verifies every byte at the end."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sent = hashlib.sha256()
        self.received = hashlib.sha256()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write)
        self._reader = threading.Thread(target=self._read)
        self._writer.start()
        self._reader.start()

    def _write(self) -> None:
        try:
            i = 0
            while not self._stop.is_set():
                chunk = hashlib.sha256(str(i).encode()).digest() * 256  # 8 KiB
                self.sock.sendall(chunk)
                self.sent.update(chunk)
                i += 1
                time.sleep(0.002)
            self.sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            self.error = exc

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(1 << 16):
                self.received.update(chunk)
        except BaseException as exc:
            self.error = exc

    def check(self) -> None:
        self._stop.set()
        self._writer.join(30)
        self._reader.join(30)
        self.sock.close()
        assert self.error is None, repr(self.error)
        assert self.received.hexdigest() == self.sent.hexdigest()


class Load:
    """Clients opening fresh connections back to back; every failure is kept."""

    def __init__(self, ports: list[int], threads: int = 4) -> None:
        self.ports = ports
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        self.started = time.monotonic()
        for t in self._threads:
            t.start()

    def _run(self, index: int) -> None:
        i = index
        while not self._stop.is_set():
            port = self.ports[i % len(self.ports)]
            i += 1
            payload = f"{index}-{i}".encode()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(payload)
                    sock.shutdown(socket.SHUT_WR)
                    data = b""
                    while chunk := sock.recv(4096):
                        data += chunk
                if not data.endswith(b"\n" + payload):
                    self.failures.append(f"port {port}: bad reply {data!r}")
                else:
                    self.ok += 1
            except OSError as exc:
                self.failures.append(f"port {port}: {exc!r}")

    def stop(self) -> float:
        """Stop; returns connections per second."""
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return self.ok / (time.monotonic() - self.started)


def reload_by(proxy: Proxy, how: str, config: dict[str, Any]) -> None:
    """Write the config, then trigger a reload one way or another."""
    before = reload_count(proxy)
    if how == "file":
        proxy.write_config(full(config))
    else:
        # Unseen by the file watcher: only the explicit trigger can apply it.
        proxy.write_config_unnoticed(full(config))
        if how == "sighup":
            proxy.proc.send_signal(signal.SIGHUP)
        else:
            assert proxy.http("POST", "/reload")[0] == 200
    deadline = time.monotonic() + 10
    while reload_count(proxy) == before:
        assert time.monotonic() < deadline, "reload did not happen"
        time.sleep(0.02)


def reload_count(proxy: Proxy) -> int:
    return int(proxy.status()["reloads"]["success"])


def full(config: dict[str, Any]) -> dict[str, Any]:
    return {"Steering": "ports", "Listen": "127.0.0.1", "Admin": "127.0.0.1:0", **config}


def test_stream_survives_50_reloads_that_remove_its_port_app_and_target(tmp_path: Path) -> None:
    echo = HashingEcho()
    other = NamedEchoServer("other")
    stream_port, other_port, moved_port = free_ports(3)
    configs = [
        {
            "Apps": [
                app("s", [stream_port], [echo.address]),
                app("o", [other_port], [other.address]),
            ]
        },
        {"Apps": [app("o", [other_port], [other.address])]},  # app and port gone
        {
            "Apps": [
                app("s", [moved_port], [other.address]),
                app("o", [other_port], [other.address]),
            ]
        },
        {"Apps": [app("o", [other_port, stream_port], [other.address])]},  # port moved
    ]
    proxy = Proxy(tmp_path, configs[0])
    stream = Stream(stream_port)
    for i in range(50):
        reload_by(proxy, ("file", "sighup", "admin")[i % 3], configs[(i + 1) % len(configs)])
    stream.check()
    assert proxy.stop() == 0


def test_20_reloads_under_load_refuse_nothing(tmp_path: Path) -> None:
    backends = [NamedEchoServer(f"b{i}") for i in range(3)]
    p1, p2, extra = free_ports(3)
    a = {"Apps": [app("web", [p1, p2], [backends[0].address, backends[1].address])]}
    b = {
        "Apps": [
            app("web", [p1, p2], [backends[1].address, backends[2].address], Balance="least-conn"),
            app("new", [extra], [backends[0].address]),
        ]
    }
    proxy = Proxy(tmp_path, a)
    load = Load([p1, p2])
    time.sleep(0.3)
    for i in range(20):
        reload_by(proxy, ("admin", "sighup")[i % 2], (b, a)[i % 2])
        time.sleep(0.05)
    rate = load.stop()
    print(f"20 reloads: {load.ok} connections at {rate:.0f}/s, no failure")
    assert load.failures == []
    assert rate >= 200, f"only {rate:.0f} connections/s: the test did not load the proxy"
    assert proxy.stop() == 0


def test_invalid_config_keeps_the_old_one_serving(tmp_path: Path) -> None:
    backend = NamedEchoServer("steady")
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("k", [port], [backend.address])]})
    proxy.config_path.write_text('{"Apps": [{"Name": "k", "Ports": [0], "Targets": []}]}')
    deadline = time.monotonic() + 10
    while b'fastproxy_reloads_total{result="failure"} 1.0' not in proxy.http("GET", "/metrics")[1]:
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.05)
    assert "reload (file changed) rejected" in proxy.log()
    assert "Ports" in proxy.log()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        assert sock.recv(100) == b"steady\n"
    code, body = proxy.http("POST", "/reload")
    assert code == 400 and b"failure" in body
    assert proxy.stop() == 0


def test_upgrade_under_load_refuses_nothing_and_keeps_streams(
    tmp_path: Path, steering: dict[str, str]
) -> None:
    echo = HashingEcho()
    backends = [NamedEchoServer(f"u{i}") for i in range(2)]
    p1, p2, stream_port, admin_port = free_ports(4)
    config = {
        "Apps": [
            app("web", [p1, p2], [b.address for b in backends]),
            app("stream", [stream_port], [echo.address]),
        ],
        "Admin": f"127.0.0.1:{admin_port}",  # the same address: its socket is handed over
        **steering,
    }
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = Proxy(tmp_path / "old", config)
    stream = Stream(stream_port)
    load = Load([p1, p2])
    time.sleep(0.3)
    admin_socket = listening_inode(admin_port)
    assert admin_socket in socket_inodes(old.pid)
    unix_socket = os.stat(old.admin_socket).st_ino
    assert admin_over_unix(old.admin_socket)["pid"] == old.pid
    new = Proxy(tmp_path / "new", config, "--takeover", "--control-socket", old.control_socket)
    time.sleep(0.5)
    assert old.proc.poll() is None, "the old process must wait for its stream"
    # The admin endpoint moved with its socket: same address, same socket (inode),
    # answered by the new process; the old one, still draining, holds it no longer.
    assert new.admin == old.admin
    assert listening_inode(admin_port) == admin_socket
    assert admin_socket in socket_inodes(new.pid)
    assert admin_socket not in socket_inodes(old.pid)
    assert new.status()["pid"] == new.pid
    # So did the admin unix socket: the same file, answered by the new process.
    assert os.stat(new.admin_socket).st_ino == unix_socket
    assert admin_over_unix(new.admin_socket)["pid"] == new.pid
    stream.check()  # opened before the upgrade, still in the old process: intact
    assert old.proc.wait(10) == 0  # its last connection closed: it exits
    assert admin_over_unix(new.admin_socket)["pid"] == new.pid  # not removed by the old one
    time.sleep(0.3)
    rate = load.stop()
    print(f"upgrade ({steering['Steering']}): {load.ok} connections at {rate:.0f}/s, no failure")
    assert load.failures == []
    assert rate >= 200, f"only {rate:.0f} connections/s"
    assert "took over from pid" in new.log()
    assert new.steering == steering["Steering"]
    # The new process serves everything, and can itself be taken over again.
    newer_dir = tmp_path / "newer"
    newer_dir.mkdir()
    newer = Proxy(newer_dir, config, "--takeover", "--control-socket", new.control_socket)
    assert new.proc.wait(10) == 0
    with socket.create_connection(("127.0.0.1", p1), timeout=5) as sock:
        assert sock.recv(100) in (b"u0\n", b"u1\n")
    assert newer.stop() == 0


def admin_over_unix(path: str) -> dict[str, Any]:
    """/status through the admin unix socket, as the CLI asks for it."""
    result = subprocess.run(
        [sys.executable, "-m", "fastproxy", "status", "--json", "--admin-socket", path],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def listening_inode(port: int) -> int:
    """The inode of the socket listening on 127.0.0.1:port (this thread's netns)."""
    local = f"0100007F:{port:04X}"
    with open("/proc/thread-self/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":  # 0A: LISTEN
                return int(fields[9])
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return inodes


def test_sigterm_drains_and_a_second_one_exits_at_once(tmp_path: Path) -> None:
    backend = NamedEchoServer("drain")
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("d", [port], [backend.address])], "DrainTimeout": 60})
    held = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert held.recv(100) == b"drain\n"
    proxy.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)  # no longer accepting
    held.sendall(b"still here")
    assert held.recv(100) == b"still here"  # ...but draining
    assert proxy.proc.poll() is None
    held.close()
    assert proxy.proc.wait(5) == 0  # the last connection closed: done

    proxy2 = Proxy(tmp_path, {"Apps": [app("d", [port], [backend.address])], "DrainTimeout": 60})
    held = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert held.recv(100) == b"drain\n"
    proxy2.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    started = time.monotonic()
    proxy2.proc.send_signal(signal.SIGTERM)
    assert proxy2.proc.wait(5) == 0
    assert time.monotonic() - started < 2
    # Cut by the second signal: a reset, since the connection was still open both
    # ways (a FIN would look like a clean end).
    with pytest.raises(ConnectionResetError):
        held.recv(100)
    held.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="bpf steering needs root")
def test_bpf_reload_adding_1000_ports(tmp_path: Path) -> None:
    from fastproxy import netns

    with netns.temporary("fpreload"):
        backend = NamedEchoServer("thousand")
        before = {"Apps": [app("a", [30000], [backend.address])]}
        after = {"Apps": [app("a", [30000, "31000-31999"], [backend.address])]}
        bpf = {"Steering": "bpf", "Listen": "::"}
        proxy = Proxy(tmp_path, {**before, **bpf})
        assert proxy.steering == "bpf"
        started = time.monotonic()
        proxy.write_config_unnoticed({**after, **bpf, "Admin": "127.0.0.1:0"})
        proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while reload_count(proxy) == 0:
            assert time.monotonic() < deadline, proxy.log()
            time.sleep(0.01)
        print(f"reload adding 1000 ports in bpf mode: {time.monotonic() - started:.3f}s")
        for port in range(31000, 32000):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                assert sock.recv(100) == b"thousand\n", port
        assert proxy.stop() == 0
        backend.close()


def test_reload_adds_removes_and_moves_ports(tmp_path: Path) -> None:
    """Through `fastproxy reload`: a new app's ports accept at once, a removed port
    refuses, and a port moved to another app reaches that app's target."""
    red, blue = NamedEchoServer("red"), NamedEchoServer("blue")
    kept, moved, removed, added = free_ports(4)
    before = {"Apps": [app("red", [kept, moved, removed], [red.address])]}
    after = {
        "Apps": [app("red", [kept], [red.address]), app("blue", [moved, added], [blue.address])]
    }
    proxy = Proxy(tmp_path, before)
    assert [first_line(p) for p in (kept, moved, removed)] == ["red"] * 3
    proxy.write_config_unnoticed(full(after))  # only `fastproxy reload` can apply it
    reload_cli = [sys.executable, "-m", "fastproxy", "reload"]
    result = subprocess.run(
        # the token file named by the config (its Admin has port 0: --admin says where)
        [*reload_cli, "--config", str(proxy.config_path), "--admin", proxy.admin],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert [first_line(p) for p in (kept, moved, added)] == ["red", "blue", "blue"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", removed), timeout=2)
    # A rejected reload through the CLI: one line, non-zero.
    proxy.config_path.write_text("{")
    result = subprocess.run(
        [*reload_cli, "--admin", proxy.admin, "--token-file", str(proxy.token_file)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0 and "invalid JSON" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert proxy.stop() == 0


def first_line(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        data = b""
        while not data.endswith(b"\n"):
            data += sock.recv(1)
    return data.decode().strip()
