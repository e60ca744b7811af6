"""The control socket (SPEC section 7): a private directory, SO_PEERCRED on both ends,
and hostile input that never costs the running proxy a socket or a thread."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fastproxy.control import handover as control
from proxyproc import ROOT, Proxy, app, free_ports
from servers import HashingEcho, talk

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="runs an attacker as nobody (setpriv)"),
    pytest.mark.timeout(120),
]

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

# The attacker: asks for the sockets and reports what it got (bytes, descriptors).
GRAB = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
got, fds = 0, 0
while True:
    try:
        s.sendall(b"TAKEOVER\\n")
        data, ancdata, _, _ = s.recvmsg(65536, socket.CMSG_SPACE(253 * 4))
    except (BrokenPipeError, ConnectionResetError):
        break
    fds += sum(len(d) // 4 for _, _, d in ancdata)
    got += len(data)
    if not data:
        break
print(json.dumps({"bytes": got, "fds": fds}))
"""


@pytest.fixture
def rundir() -> Iterator[Path]:
    """World-readable (unlike tmp_path) so that nobody can reach what is inside."""
    path = Path(tempfile.mkdtemp(prefix="fp-privs-systemd-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def served(tmp_path: Path, rundir: Path) -> Iterator[tuple[Proxy, int]]:
    echo = HashingEcho()
    (port,) = free_ports(1)
    proxy = Proxy(
        tmp_path,
        {"Apps": [app("a", [port], [echo.address])]},
        "--control-socket",
        str(rundir / "run" / "control.sock"),
    )
    yield proxy, port
    proxy.kill()
    echo.backend.close()


def assert_serves(port: int) -> None:
    payload = os.urandom(1 << 18)
    assert hashlib.sha256(talk(port, payload)).digest() == hashlib.sha256(payload).digest()


def listening_inodes(pid: int) -> set[str]:
    """Socket inodes of TCP listeners held by pid."""
    listeners = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                listeners.add(fields[9])
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        if link.startswith("socket:["):
            held.add(link[8:-1])
    return listeners & held


def test_nobody_cannot_take_over_through_a_world_writable_directory(
    served: tuple[Proxy, int], rundir: Path
) -> None:
    proxy, port = served
    ctl = rundir / "run" / "control.sock"
    held = listening_inodes(proxy.pid)
    assert len(held) == 2  # the port and the admin endpoint
    fds = proxy.fd_count()
    # The attack's premise: the directory and the socket opened up to everyone.
    ctl.parent.chmod(0o777)
    ctl.chmod(0o777)

    grab = subprocess.run(
        [*AS_NOBODY, sys.executable, "-c", GRAB, str(ctl)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert grab.returncode == 0, grab.stderr
    assert json.loads(grab.stdout) == {"bytes": 0, "fds": 0}

    config = rundir / "config.json"
    config.write_text(json.dumps({"Apps": [app("a", [port], ["127.0.0.1:9"])]}))
    config.chmod(0o644)
    attempt = subprocess.run(
        [*AS_NOBODY, sys.executable, "-m", "fastproxy", "serve", str(config), "--takeover",
         "--control-socket", str(ctl), "--admin", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )  # fmt: skip
    assert attempt.returncode == 1
    assert attempt.stderr.startswith("error: ") and attempt.stderr.count("\n") == 1
    assert "Traceback" not in attempt.stderr

    log = proxy.log()
    assert log.count("control socket: refused pid") == 2 and "of uid 65534" in log
    assert "Traceback" not in log
    assert listening_inodes(proxy.pid) == held and proxy.fd_count() == fds
    assert_serves(port)
    assert proxy.status()["apps"][0]["name"] == "a"
    assert proxy.stop() == 0


@pytest.mark.parametrize("problem", ["world-writable", "owned by nobody"])
def test_an_untrusted_directory_gets_no_control_socket(
    tmp_path: Path, rundir: Path, problem: str
) -> None:
    run = rundir / "run"
    run.mkdir()
    if problem == "world-writable":
        run.chmod(0o777)
        reason = "is writable by group or others (mode 0777)"
    else:
        os.chown(run, 65534, 65534)
        reason = "is owned by uid 65534, not 0"
    echo = HashingEcho()
    (port,) = free_ports(1)
    proxy = Proxy(
        tmp_path,
        {"Apps": [app("a", [port], [echo.address])]},
        "--control-socket",
        str(run / "control.sock"),
    )
    refusal = f"no control socket at {run}/control.sock (no takeover possible): "
    deadline = time.monotonic() + 10  # logged just after "serving"
    while refusal not in proxy.log():
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.05)
    assert reason in proxy.log()
    assert not (run / "control.sock").exists()
    assert_serves(port)
    assert proxy.stop() == 0
    echo.backend.close()


def _garbage(conn: socket.socket) -> None:
    conn.sendall(bytes(range(256)) * 64)


def _truncated(conn: socket.socket) -> None:
    conn.sendall(b"TAKEO")


def _gone_before_the_sockets(conn: socket.socket) -> None:
    conn.sendall(b"TAKEOVER\n")


def _gone_mid_handover(conn: socket.socket) -> None:
    conn.sendall(b"TAKEOVER\n")
    conn.recv(3)


def _truncated_ready(conn: socket.socket) -> None:
    conn.sendall(b"TAKEOVER\n")
    conn.recv(1 << 20)
    conn.sendall(b"REA")


def _silent(conn: socket.socket) -> None:
    pass


def test_hostile_peers_cost_the_running_proxy_nothing(
    served: tuple[Proxy, int], tmp_path: Path
) -> None:
    proxy, port = served
    held = listening_inodes(proxy.pid)
    for misbehave in (
        _garbage,
        _truncated,
        _gone_before_the_sockets,
        _gone_mid_handover,
        _truncated_ready,
        _silent,
    ):
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(10)
            conn.connect(proxy.control_socket)
            misbehave(conn)
    assert_serves(port)
    assert listening_inodes(proxy.pid) == held
    assert "Traceback" not in proxy.log()
    # The control thread is alive: a real upgrade still works.
    (tmp_path / "new").mkdir()
    config = json.loads(proxy.config_path.read_text())
    new = Proxy(tmp_path / "new", config, "--takeover", "--control-socket", proxy.control_socket)
    assert proxy.proc.wait(30) == 0
    assert_serves(port)
    assert "Traceback" not in proxy.log() + new.log()
    assert new.stop() == 0


def _fake_running_proxy(path: str, answer: Callable[[socket.socket], None]) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(64)
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _header(value: object) -> bytes:
    data = json.dumps(value).encode()
    return struct.pack("!I", len(data)) + data


def _one_socket_of_two(conn: socket.socket) -> None:
    conn.sendall(_header({"sockets": [{"role": "port"}] * 2, "pid": 1, "steering": "ports"}))
    with socket.socket() as sock:
        socket.send_fds(conn, [b"F"], [sock.fileno()])


@pytest.mark.parametrize(
    "answer, reason",
    [
        (
            lambda c: c.sendall(struct.pack("!I", 0xFFFFFFFF)),
            "header too large \\(4294967295 bytes\\)",
        ),
        (lambda c: c.sendall(struct.pack("!I", 100) + b"{"), "closed the control connection"),
        (lambda c: c.sendall(struct.pack("!I", 5) + b"\xff\xfe{]x"), "bad handover"),
        (
            lambda c: c.sendall(_header({"sockets": "x", "pid": 1, "steering": "ports"})),
            "malformed",
        ),
        (lambda c: c.sendall(_header([1, 2])), "bad handover"),
        (
            lambda c: _one_socket_of_two(c),
            "fewer sockets than announced",
        ),
    ],
)
def test_a_successor_refuses_a_bad_handover_in_one_line(
    rundir: Path, answer: Callable[[socket.socket], None], reason: str
) -> None:
    path = str(rundir / "fake.sock")
    fds = len(os.listdir("/proc/self/fd"))
    thread = _fake_running_proxy(path, answer)
    with pytest.raises(control.TakeoverError, match=reason) as err:
        control.Successor(path, timeout=10)
    assert "\n" not in str(err.value)
    thread.join(10)
    assert len(os.listdir("/proc/self/fd")) == fds  # whatever was received is closed


# A running "proxy" as nobody that would hand over a listening socket.
IMPOSTOR = """
import json, socket, struct, sys
listener = socket.create_server(("127.0.0.1", 0))
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1])
srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept()
conn.recv(64)
header = json.dumps({"pid": 1, "steering": "ports", "sockets": [{"role": "port", "port": 1}]})
conn.sendall(struct.pack("!I", len(header)) + header.encode())
socket.send_fds(conn, [b"F"], [listener.fileno()])
conn.recv(16)
"""


def test_a_successor_refuses_a_control_socket_served_by_another_user(rundir: Path) -> None:
    rundir.chmod(0o777)  # where the impostor can bind
    path = str(rundir / "impostor.sock")
    impostor = subprocess.Popen(
        [*AS_NOBODY, sys.executable, "-c", IMPOSTOR, path], stdout=subprocess.PIPE, text=True
    )
    try:
        assert impostor.stdout is not None and impostor.stdout.readline() == "ready\n"
        with pytest.raises(control.TakeoverError, match="served by uid 65534"):
            control.Successor(path, timeout=10)
    finally:
        impostor.kill()
        impostor.wait(10)
