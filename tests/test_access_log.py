"""AccessLog: one JSON line per connection when it ends, written from rings the
relay fills; SIGUSR1 reopens the file; a destination that cannot take the lines
never slows relaying, and the lost lines are counted."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastproxy import _relay
from fastproxy.observe import accesslog
from metricsutil import metric
from proxyproc import Proxy, app, free_ports
from servers import HashingEcho


def lines_of(path: Path, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The log's entries once there are `count` of them (and no more after a pause)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        entries = [json.loads(line) for line in text.splitlines()]
        if len(entries) >= count:
            time.sleep(0.3)  # the drain runs every 100 ms: nothing more may come
            text = path.read_text()
            return [json.loads(line) for line in text.splitlines()]
        assert time.monotonic() < deadline, f"{len(entries)} lines, expected {count}"
        time.sleep(0.05)


def client(port: int, payload: bytes, header: bytes = b"") -> tuple[str, bytes]:
    """One exchange; (the client's own "ip:port", what came back)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        me = "{}:{}".format(*sock.getsockname())
        chunks = []
        with contextlib.suppress(OSError):  # closed at once: no target, or turned away
            sock.sendall(header + payload)
            sock.shutdown(socket.SHUT_WR)
            chunks += iter(lambda: sock.recv(65536), b"")
        return me, b"".join(chunks)


def test_one_line_per_connection_with_its_fields(tmp_path: Path) -> None:
    echo = HashingEcho()
    port, dead_port, lb_port, capped_port, nowhere = free_ports(5)
    log = tmp_path / "access.log"
    apps = [
        app("echo", [port], [echo.address]),
        app("dead", [dead_port], [f"127.0.0.1:{nowhere}"]),
        app("lb", [lb_port], [echo.address], AcceptProxyProtocol=True),
        app("capped", [capped_port], [echo.address], MaxConnections=1),
    ]
    proxy = Proxy(tmp_path, {"Apps": apps, "AccessLog": str(log)})
    sizes = {}
    for size in (0, 1, 1000, 300_000):
        me, reply = client(port, os.urandom(size))
        assert len(reply) == size
        sizes[me] = size
    dead_client, _ = client(dead_port, b"lost")
    lb_client, _ = client(lb_port, b"hello", b"PROXY TCP4 203.0.113.9 10.0.0.1 4242 443\r\n")
    with socket.create_connection(("127.0.0.1", capped_port), timeout=10) as held:
        held.sendall(b"x")
        assert held.recv(1) == b"x"
        rejected_client, reply = client(capped_port, b"y")
        assert reply == b""
    entries = lines_of(log, 8)
    assert len(entries) == 8
    by_client = {e["client"]: e for e in entries}
    for me, size in sizes.items():
        e = by_client[me]
        assert (e["app"], e["port"], e["target"], e["result"]) == ("echo", port, echo.address, "ok")
        assert (e["bytes_in"], e["bytes_out"], e["connect_attempts"]) == (size, size, 1)
        assert 0 <= e["duration"] < 10
        assert e["time"].endswith("Z")
    dead = by_client[dead_client]
    assert (dead["app"], dead["result"], dead["target"]) == (
        "dead",
        "no-target",
        f"127.0.0.1:{nowhere}",
    )
    assert (dead["bytes_in"], dead["bytes_out"], dead["connect_attempts"]) == (0, 0, 1)
    carried = by_client["203.0.113.9:4242"]  # the address the PROXY header carries
    assert lb_client not in by_client
    assert (carried["app"], carried["result"], carried["bytes_in"]) == ("lb", "ok", 5)
    assert by_client[rejected_client]["result"] == "rejected"
    capped = [e for e in entries if e["app"] == "capped"]
    assert sorted(e["result"] for e in capped) == ["ok", "rejected"]
    assert metric(proxy, "fastproxy_access_log_dropped_total") == 0


def test_sigusr1_reopens_after_rotation(tmp_path: Path) -> None:
    echo = HashingEcho()
    (port,) = free_ports(1)
    log = tmp_path / "access.log"
    proxy = Proxy(tmp_path, {"Apps": [app("echo", [port], [echo.address])], "AccessLog": str(log)})
    before = {client(port, b"before")[0] for _ in range(3)}
    assert len(lines_of(log, 3)) == 3
    log.rename(tmp_path / "access.log.1")  # what logrotate does
    proxy.proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    after = {client(port, b"after")[0] for _ in range(2)}
    assert {e["client"] for e in lines_of(log, 2)} == after
    assert {e["client"] for e in lines_of(tmp_path / "access.log.1", 3)} == before


def test_a_stuck_destination_never_stalls_relaying(tmp_path: Path) -> None:
    echo = HashingEcho()
    (port,) = free_ports(1)
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)  # nobody reads it: the proxy cannot even open it for writing
    proxy = Proxy(tmp_path, {"Apps": [app("echo", [port], [echo.address])], "AccessLog": str(fifo)})
    begun = time.monotonic()
    for i in range(50):
        assert client(port, b"%d" % i)[1] == b"%d" % i
    assert time.monotonic() - begun < 20
    deadline = time.monotonic() + 5
    while metric(proxy, "fastproxy_access_log_dropped_total") < 50:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert metric(proxy, "fastproxy_access_log_dropped_total") == 50
    assert proxy.stop() == 0  # and it stops promptly


ALOG_SLOTS = 4096  # records per worker ring (relay/structs.pxi)


class NoNames:
    """AccessLog names apps and targets from the server's routes: none here."""

    slot_keys: dict[int, tuple[str, str, str]] = {}


@contextlib.contextmanager
def logging_relay() -> Iterator[tuple[_relay.Relay, int]]:
    """A started relay (one worker) with its access log on and no drain thread: the
    test drains. Its only target refuses, so every client is closed at once, logged."""
    [dead] = free_ports(1)
    relay = _relay.Relay(workers=1)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    target = (socket.AF_INET, "127.0.0.1", dead, 1, _relay.TARGET_UP, 1, False)
    relay.set_app(0, app_slot=0, targets=[target])
    relay.set_port(port, 0)
    relay.add_listener(listener.fileno(), port)
    relay.set_access_log(True)
    relay.start()
    try:
        yield relay, port
    finally:
        relay.stop()
        listener.close()


def end_connections(port: int, count: int) -> list[int]:
    """Clients the relay closes (its target refuses): their ports, in order."""
    ports = []
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert sock.recv(1) == b""  # closed: the record is in the ring (or counted)
            ports.append(sock.getsockname()[1])
    return ports


def test_a_full_ring_drops_records_and_counts_each() -> None:
    with logging_relay() as (relay, port):
        end_connections(port, ALOG_SLOTS + 100)  # nothing drains meanwhile
        assert relay.access_log_dropped() == 100
        assert len(relay.drain_access_log()) == ALOG_SLOTS
        later = end_connections(port, 10)  # drained: there is room again
        assert [rec[-1] for rec in relay.drain_access_log()] == later
        assert relay.access_log_dropped() == 100


def test_a_slow_reader_gets_whole_lines_and_what_pending_max_cannot_hold_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The destination takes a page at a time: writes stop part-way through a line,
    the rest of it waits with the lines behind it, up to PENDING_MAX bytes; lines
    beyond are dropped and counted. The reader gets whole lines, in order."""
    monkeypatch.setattr(accesslog, "PENDING_MAX", 8192)
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
    try:
        with logging_relay() as (relay, port):
            log = accesslog.AccessLog(relay, NoNames())  # type: ignore[arg-type]
            log.path = str(fifo)  # configure() would start the drain thread
            clients = end_connections(port, 100)  # ~200 bytes a line: 20 KB
            log.flush()
            received = read_available(reader)
            assert len(received) == 4096 and not received.endswith(b"\n")  # a partial write
            for _ in range(10):  # the reader catches up, a page per drain
                log.flush()
                received += read_available(reader)
            log._close_file()
        lines = received.decode().splitlines(keepends=True)
        assert all(line.endswith("\n") for line in lines)
        kept = [json.loads(line)["client"] for line in lines]
        assert kept == [f"127.0.0.1:{p}" for p in clients[: len(kept)]]
        # Held up to PENDING_MAX (whole lines only), the rest dropped and counted.
        assert 8192 - 400 < len(received) <= 8192, len(received)
        assert log.unwritten == log.dropped() == 100 - len(kept)
    finally:
        os.close(reader)


def read_available(fd: int) -> bytes:
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            data += chunk
    return data


def test_idle_timeout_and_reset_results(tmp_path: Path) -> None:
    echo = HashingEcho()
    port, idle_port = free_ports(2)
    log = tmp_path / "access.log"
    apps = [app("echo", [port], [echo.address]),
            app("idle", [idle_port], [echo.address], IdleTimeout=1)]  # fmt: skip
    Proxy(tmp_path, {"Apps": apps, "AccessLog": str(log)})
    with socket.create_connection(("127.0.0.1", idle_port), timeout=10) as quiet:
        quiet.sendall(b"z")
        assert quiet.recv(1) == b"z"
        with contextlib.suppress(OSError):
            assert quiet.recv(1) == b""  # closed by the proxy after about a second
    with socket.create_connection(("127.0.0.1", port), timeout=10) as rude:
        rude.sendall(b"abc")
        assert rude.recv(3) == b"abc"
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    results = {e["app"]: e for e in lines_of(log, 2)}
    assert results["idle"]["result"] == "idle-timeout"
    assert (results["idle"]["bytes_in"], results["idle"]["bytes_out"]) == (1, 1)
    assert 1 <= results["idle"]["duration"] < 5
    assert results["echo"]["result"] == "reset"
    assert results["echo"]["bytes_in"] == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_written_and_reopened_as_the_user(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    where = Path(tempfile.mkdtemp(prefix="fp-l4-relay-alog-"))
    try:
        where.chmod(0o755)
        (where / "logs").mkdir()
        os.chown(where / "logs", nobody.pw_uid, nobody.pw_gid)
        (where / "run").mkdir(0o700)  # for the control socket, as systemd makes it
        log = where / "logs" / "access.log"
        echo = HashingEcho()
        (port,) = free_ports(1)
        config = {"Apps": [app("echo", [port], [echo.address])], "AccessLog": str(log),
                  "User": "nobody"}  # fmt: skip
        proxy = Proxy(tmp_path, config, "--control-socket", str(where / "run" / "c.sock"))
        client(port, b"one")
        assert len(lines_of(log, 1)) == 1
        log.rename(where / "logs" / "access.log.1")
        proxy.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        client(port, b"two")
        assert [e["bytes_in"] for e in lines_of(log, 1)] == [3]
        for path in (log, where / "logs" / "access.log.1"):
            assert path.stat().st_uid == nobody.pw_uid
    finally:
        shutil.rmtree(where, ignore_errors=True)
