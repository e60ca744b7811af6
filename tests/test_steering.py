"""BPF sk_lookup steering (fastproxy.steering), each test in a fresh network namespace.

Plain listening sockets stand in for the proxy. Needs root; with root, bcc and the kernel
headers must be there (scripts/install-build-deps.sh): these tests fail rather than skip.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fastproxy import netns, steering
from fastproxy.steering import (
    POLICY_HAS_ALLOW,
    Steering,
    SteeringUnavailable,
    acl_key,
    bpfsys,
    loader,
    pins,
)

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0, reason="BPF steering needs root (sk_lookup, network namespaces)"
    ),
    pytest.mark.timeout(60),
]

SRC = str(Path(__file__).resolve().parent.parent / "src")
PIN_ROOT = f"/sys/fs/bpf/fastproxy-test-{os.getpid()}"
TIMEOUT = 5.0

# A stand-in proxy in another process: listens dual-stack, steers ports [first, last) and
# prints "<pid> <link id>" once it does. Never exits by itself within a test's time.
CHILD = """
import os, socket, sys, time
from fastproxy.steering import Steering
pin_root, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.bind(("::", 0))
srv.listen(64)
steering = Steering.attach([srv], range(first, last), pin_root=pin_root)
print(os.getpid(), steering.link_id, flush=True)
time.sleep(120)
"""


@dataclass(frozen=True)
class Netns:
    name: str
    inode: int

    @property
    def pin_dir(self) -> str:
        return os.path.join(PIN_ROOT, str(self.inode))


@pytest.fixture(scope="module", autouse=True)
def pin_root() -> Iterator[str]:
    yield PIN_ROOT
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(PIN_ROOT):
            _force_remove(os.path.join(PIN_ROOT, name))
        os.rmdir(PIN_ROOT)


@pytest.fixture
def ns() -> Iterator[Netns]:
    """A fresh netns (lo up), entered by this thread for the test; deleted afterwards."""
    with netns.temporary("fpsteer") as name:
        ino = netns.inode()
        yield Netns(name, ino)
        _force_remove(os.path.join(PIN_ROOT, str(ino)))  # whatever a failed test left


@pytest.fixture
def attach(ns: Netns) -> Iterator[Callable[..., Steering]]:
    """Steering.attach under the test pin root; closed at teardown."""
    made: list[Steering] = []

    def _attach(sockets: list[socket.socket], ports: Iterable[int], **kwargs: Any) -> Steering:
        st = Steering.attach(sockets, ports, pin_root=PIN_ROOT, **kwargs)
        made.append(st)
        return st

    yield _attach
    for st in made:
        st.close()


@pytest.fixture
def sockets() -> Iterator[Callable[..., socket.socket]]:
    """Factory of listening sockets, all closed at teardown."""
    made: list[socket.socket] = []

    def _listen(
        family: int = socket.AF_INET6, addr: str = "::", port: int = 0, v6only: bool = False
    ) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        made.append(sock)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind((addr, port))
        sock.listen(128)
        sock.settimeout(TIMEOUT)
        return sock

    yield _listen
    for sock in made:
        sock.close()


# --- helpers -------------------------------------------------------------------------------


def _force_remove(directory: str) -> None:
    """Detach the pinned link (if any) and remove a pin directory."""
    with contextlib.suppress(OSError):
        fd = bpfsys.obj_get(os.path.join(directory, "link"))
        with contextlib.suppress(OSError):
            bpfsys.link_detach(fd)
        os.close(fd)
    pins.remove_dir(directory)


def connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=TIMEOUT)


def accept_on(srv: socket.socket, host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """Connect to host:port and accept it on srv; (client, accepted)."""
    client = connect(host, port)
    accepted, _ = srv.accept()
    accepted.settimeout(TIMEOUT)
    return client, accepted


def assert_steered(srv: socket.socket, host: str, port: int) -> None:
    """A connection to host:port is accepted by srv, with the dialled port as local port."""
    client, accepted = accept_on(srv, host, port)
    with client, accepted:
        assert accepted.getsockname()[1] == port
        assert accepted.getpeername()[1] == client.getsockname()[1]


def refused(host: str, port: int) -> bool:
    try:
        connect(host, port).close()
    except ConnectionRefusedError:
        return True
    return False


def nothing_pending(srv: socket.socket) -> bool:
    return not select.select([srv], [], [], 0)[0]


def listeners(ns: Netns) -> list[str]:
    out = subprocess.run(
        netns.nsenter_argv(ns.name, "ss", "-Hltn"),
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def sk_lookup_links(ns: Netns) -> list[dict[str, object]]:
    """bpftool's view of the sk_lookup links attached to the namespace."""
    out = subprocess.run(
        ["bpftool", "-j", "link", "show"], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    return [
        link
        for link in json.loads(out or "[]")
        if link.get("type") == "netns"
        and link.get("netns_ino") == ns.inode
        and link.get("attach_type") == "sk_lookup"
    ]


def prog_exists(prog_id: int) -> bool:
    result = subprocess.run(
        ["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True, timeout=30
    )
    return result.returncode == 0


@contextlib.contextmanager
def child_proxy(argv_prefix: list[str], first: int, last: int) -> Iterator[tuple[int, int, int]]:
    """Run CHILD (a steering process); yields (pid, link id, popen pid). Killed on exit."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    argv = [*argv_prefix, sys.executable, "-c", CHILD, PIN_ROOT, str(first), str(last)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        assert line, f"child proxy did not start (exit {proc.poll()})"
        pid, link_id = map(int, line.split())
        yield pid, link_id, proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)


def kill9(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)


# --- tests ---------------------------------------------------------------------------------


def test_probe_finds_bpf_steering_usable() -> None:
    assert steering.probe() is None


def test_2000_ports_on_one_listening_socket(ns: Netns, sockets, attach) -> None:
    srv = sockets()
    ports = range(20000, 22000)
    attach([srv], ports)

    ss = listeners(ns)
    assert len(ss) == 1, ss
    assert ss[0].split()[3].endswith(f":{srv.getsockname()[1]}")

    for i, port in enumerate(ports):
        assert_steered(srv, "127.0.0.1" if i % 2 else "::1", port)


def test_port_not_configured_is_refused(ns: Netns, sockets, attach) -> None:
    srv = sockets()
    attach([srv], [20000])
    assert refused("127.0.0.1", 20001)
    assert refused("::1", 20001)
    assert nothing_pending(srv)


def test_other_programs_listener_keeps_its_port(ns: Netns, sockets, attach) -> None:
    srv = sockets()
    other = sockets(socket.AF_INET, "127.0.0.1", 20500)
    attach([srv], [20000, 20001])

    client, accepted = accept_on(other, "127.0.0.1", 20500)
    with client, accepted:
        assert accepted.getsockname() == ("127.0.0.1", 20500)
    assert nothing_pending(srv)

    # UDP on a steered port number is not ours either: the program passes it.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp_srv:
        udp_srv.bind(("127.0.0.1", 20000))
        udp_srv.settimeout(TIMEOUT)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp_client:
            udp_client.sendto(b"ping", ("127.0.0.1", 20000))
            assert udp_srv.recv(16) == b"ping"


@pytest.mark.parametrize("layout", ["dual-stack", "per-family"])
def test_ipv4_and_ipv6_are_both_steered(ns: Netns, sockets, attach, layout: str) -> None:
    if layout == "dual-stack":
        v6 = v4 = sockets(socket.AF_INET6, "::", v6only=False)
        given = [v6]
    else:
        v4 = sockets(socket.AF_INET, "0.0.0.0")
        v6 = sockets(socket.AF_INET6, "::", v6only=True)
        given = [v6, v4]
    st = attach(given, [20000])

    assert_steered(v4, "127.0.0.1", 20000)
    assert_steered(v6, "::1", 20000)
    cookies = st.socket_cookies()
    assert cookies[steering.SLOT_IPV4] == _cookie(v4)
    assert cookies[steering.SLOT_IPV6] == _cookie(v6)


def test_ipv6_only_socket_leaves_ipv4_alone(ns: Netns, sockets, attach) -> None:
    srv = sockets(socket.AF_INET6, "::", v6only=True)
    st = attach([srv], [20000])
    assert_steered(srv, "::1", 20000)
    assert refused("127.0.0.1", 20000)  # no IPv4 socket: counted as an error, then passed
    assert st.counters() == {"lookups": 2, "steered": 1, "misses": 0, "errors": 1, "denied": 0}


def test_socket_bound_to_an_address_is_steered_only_that_address(
    ns: Netns, sockets, attach
) -> None:
    srv = sockets(socket.AF_INET, "127.0.0.1")
    other = sockets(socket.AF_INET, "127.0.0.2", 20000)  # same port, another address
    st = attach([srv], [20000])

    assert_steered(srv, "127.0.0.1", 20000)
    client, accepted = accept_on(other, "127.0.0.2", 20000)
    with client, accepted:
        assert accepted.getsockname() == ("127.0.0.2", 20000)
    assert refused("127.0.0.3", 20000)
    assert st.counters() == {"lookups": 3, "steered": 1, "misses": 2, "errors": 0, "denied": 0}


def test_reuseport_group_shares_steered_connections(ns: Netns) -> None:
    # One socket per worker in an SO_REUSEPORT group; steering names one, the kernel spreads.
    group: list[socket.socket] = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", group[0].getsockname()[1] if group else 0))
        sock.listen(128)
        group.append(sock)
    try:
        with Steering.attach(group[:1], [20000], pin_root=PIN_ROOT):
            clients = [connect("127.0.0.1", 20000) for _ in range(64)]
            queued = [_drain(sock) for sock in group]
            for client in clients:
                client.close()
        assert sum(queued) == 64
        assert all(queued), queued
    finally:
        for sock in group:
            sock.close()


def _drain(srv: socket.socket) -> int:
    """Accept and close every queued connection; how many there were."""
    srv.setblocking(False)
    count = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            srv.accept()[0].close()
            count += 1
    return count


def test_counters_count_each_lookup_once(ns: Netns, sockets, attach) -> None:
    srv = sockets()
    st = attach([srv], range(20000, 20040))
    for i, port in enumerate(range(20000, 20040)):
        assert_steered(srv, "::1" if i % 2 else "127.0.0.1", port)
    for port in range(21000, 21007):
        assert refused("127.0.0.1", port)
    assert st.counters() == {"lookups": 47, "steered": 40, "misses": 7, "errors": 0, "denied": 0}


def test_set_ports_adds_and_removes_in_place(ns: Netns, sockets, attach) -> None:
    srv = sockets()
    st = attach([srv], [20000, 20001])
    assert st.read_ports() == {20000, 20001}

    kept_client, kept = accept_on(srv, "127.0.0.1", 20000)
    with kept_client, kept:
        st.set_ports([20000, 20002])

        assert st.ports == {20000, 20002}
        assert st.read_ports() == {20000, 20002}
        assert_steered(srv, "127.0.0.1", 20002)
        assert_steered(srv, "::1", 20002)
        assert refused("127.0.0.1", 20001)
        assert_steered(srv, "127.0.0.1", 20000)

        # The connection accepted before the change still carries data both ways.
        kept_client.sendall(b"before")
        assert kept.recv(16) == b"before"
        kept.sendall(b"after")
        assert kept_client.recv(16) == b"after"

    st.set_ports(range(30000, 40000))  # a large swap, then back to nothing
    assert st.read_ports() == frozenset(range(30000, 40000))
    st.set_ports([])
    assert st.read_ports() == frozenset()
    assert refused("127.0.0.1", 30000)


def test_close_leaves_no_pinned_object_and_no_link(ns: Netns, sockets, attach) -> None:
    srv = sockets()
    st = attach([srv], [20000])
    prog_id = st.prog_id
    assert sorted(os.listdir(ns.pin_dir)) == [
        "allow_nets",
        "counters",
        "denied",
        "deny_nets",
        "link",
        "owner",
        "policies",
        "ports",
        "prog",
        "sockets",
    ]
    assert os.readlink(os.path.join(ns.pin_dir, "owner")).startswith(f"{os.getpid()}:")
    assert len(sk_lookup_links(ns)) == 1

    st.close()

    assert not os.path.exists(ns.pin_dir)
    assert sk_lookup_links(ns) == []
    assert not prog_exists(prog_id)
    assert refused("127.0.0.1", 20000)


def test_second_attach_while_owner_lives_is_refused(ns: Netns, sockets, attach) -> None:
    srv = sockets()
    attach([srv], [20000])
    with pytest.raises(SteeringUnavailable, match="this process"):
        Steering.attach([srv], [20001], pin_root=PIN_ROOT)
    assert len(sk_lookup_links(ns)) == 1
    assert_steered(srv, "127.0.0.1", 20000)


def test_state_of_a_killed_owner_is_replaced(ns: Netns, sockets, attach) -> None:
    with child_proxy(netns.nsenter_argv(ns.name), 20000, 20010) as (pid, link_id, _):
        client = connect("127.0.0.1", 20005)  # the child's socket completes the handshake
        client.close()
        srv = sockets()
        with pytest.raises(SteeringUnavailable, match=f"another fastproxy \\(pid {pid}\\)"):
            Steering.attach([srv], [20000], pin_root=PIN_ROOT)
        kill9(pid)

    # The dead owner's program is still attached, but its socket is gone with it.
    assert os.readlink(os.path.join(ns.pin_dir, "owner")).startswith(f"{pid}:")
    assert refused("127.0.0.1", 20005)

    st = attach([srv], range(20000, 20010))
    assert_steered(srv, "127.0.0.1", 20005)
    links = sk_lookup_links(ns)
    assert len(links) == 1, links
    assert links[0]["id"] == link_id == st.link_id  # the pinned link, updated in place
    assert links[0]["prog_id"] == st.prog_id
    assert os.readlink(os.path.join(ns.pin_dir, "owner")).startswith(f"{os.getpid()}:")


def test_program_attached_from_another_bpffs_is_found(ns: Netns, sockets, attach) -> None:
    # The child pins into a bpffs of its own (as under `ip netns exec`): no pins of it here.
    private_bpffs = [
        *netns.nsenter_argv(ns.name),
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount -t bpf bpf /sys/fs/bpf && exec "$@"',
        "sh",
    ]
    srv = sockets()
    with child_proxy(private_bpffs, 20000, 20010) as (pid, link_id, _):
        assert not os.path.exists(ns.pin_dir)
        with pytest.raises(SteeringUnavailable, match="not visible here"):
            Steering.attach([srv], [20000], pin_root=PIN_ROOT)
        # Its bpffs, and the pin with it, dies with the child: hold the link, as a surviving
        # process of that mount namespace would, so that a dead owner's link is left.
        held = bpfsys.get_fd_by_id(bpfsys.BPF_LINK_GET_FD_BY_ID, link_id)
        kill9(pid)

    try:
        assert [link["id"] for link in sk_lookup_links(ns)] == [link_id]
        st = attach([srv], [20000])  # its sockmap is empty: stale, detached
        assert_steered(srv, "::1", 20000)
        assert [link["id"] for link in sk_lookup_links(ns)] == [st.link_id]
    finally:
        os.close(held)


def test_pins_of_a_deleted_netns_are_swept(ns: Netns, sockets, attach) -> None:
    gone = f"{ns.name}-gone"
    gone_dir = os.path.join(PIN_ROOT, str(netns.inode(netns.create(gone))))
    try:
        with child_proxy(netns.nsenter_argv(gone), 20000, 20010) as (pid, _, _):
            kill9(pid)
    finally:
        netns.delete(gone)
    # The kernel tears the netns down asynchronously; its link turns defunct then.
    link = bpfsys.obj_get(os.path.join(gone_dir, "link"))
    try:
        deadline = time.monotonic() + 10
        while bpfsys.link_info(link).netns_ino and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bpfsys.link_info(link).netns_ino == 0
    finally:
        os.close(link)

    attach([sockets()], [20000])
    assert not os.path.exists(gone_dir)


def test_takeover_replaces_a_live_owner_in_place(ns: Netns, sockets, attach) -> None:
    srv = sockets()
    with child_proxy(netns.nsenter_argv(ns.name), 20000, 20010) as (pid, link_id, _):
        st = attach([srv], range(20000, 20010), takeover=True)
        assert st.link_id == link_id
        assert_steered(srv, "127.0.0.1", 20005)
        assert os.readlink(os.path.join(ns.pin_dir, "owner")).startswith(f"{os.getpid()}:")
        kill9(pid)
    assert_steered(srv, "::1", 20009)
    assert [link["id"] for link in sk_lookup_links(ns)] == [link_id]


BPFFS_ABSENT = """
import socket, sys
from fastproxy import steering
from fastproxy.steering import pins
root = sys.argv[1]
assert not pins.is_bpffs(root), "bpffs still mounted"
srv = socket.create_server(("127.0.0.1", 0))
st = steering.Steering.attach([srv], [20000], pin_root=root)
assert pins.is_bpffs(root)
socket.create_connection(("127.0.0.1", 20000), timeout=5).close()
srv.settimeout(5)
assert srv.accept()[0].getsockname()[1] == 20000
st.close()
print("ok")
"""


def test_bpffs_is_mounted_when_absent(ns: Netns) -> None:
    # In a private mount namespace without bpffs, as on a machine that did not mount it.
    argv = [
        *netns.nsenter_argv(ns.name),
        *["unshare", "--mount", "--propagation", "private", "sh", "-c"],
        'umount /sys/fs/bpf 2>/dev/null; exec "$@"',
        *["sh", sys.executable, "-c", BPFFS_ABSENT, PIN_ROOT],
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert result.stdout.strip() == "ok", result.stderr


def test_compile_error_is_one_line(ns: Netns, sockets, tmp_path, monkeypatch) -> None:
    broken = tmp_path / "steer.c"
    broken.write_text("int fastproxy_steer(struct bpf_sk_lookup *ctx) { return nope; }\n")
    monkeypatch.setattr(loader, "_source_path", lambda name="steer.c": str(broken))
    with pytest.raises(SteeringUnavailable, match="cannot compile .*error") as info:
        Steering.attach([sockets()], [20000], pin_root=PIN_ROOT)
    assert "\n" not in str(info.value)
    assert not os.path.exists(ns.pin_dir)


def test_attach_errors_are_one_line(ns: Netns, sockets) -> None:
    not_listening = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with not_listening:
        with pytest.raises(SteeringUnavailable, match="listening") as info:
            Steering.attach([not_listening], [20000], pin_root=PIN_ROOT)
        assert "\n" not in str(info.value)
    with pytest.raises(SteeringUnavailable, match="port out of 1..65535"):
        Steering.attach([sockets()], [0], pin_root=PIN_ROOT)
    with pytest.raises(SteeringUnavailable, match="one listening socket per address family"):
        Steering.attach([sockets(), sockets()], [20000], pin_root=PIN_ROOT)
    assert not os.path.exists(ns.pin_dir)


def _cookie(sock: socket.socket) -> int:
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, 57, 8), sys.byteorder)  # SO_COOKIE


# --- trust in the pin root (SPEC section 7) -------------------------------------------------

LOCKER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def own_root() -> Iterator[str]:
    """A pin root for this test alone (its owner and mode are the test's subject)."""
    root = f"/sys/fs/bpf/fastproxy-privs-systemd-{os.getpid()}"
    yield root
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(root):
            _force_remove(os.path.join(root, name))
        os.rmdir(root)


@contextlib.contextmanager
def locked_by_another_process(directory: str) -> Iterator[int]:
    child = subprocess.Popen([sys.executable, "-c", LOCKER, directory], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"locked\n"
        yield child.pid
    finally:
        child.kill()
        child.wait(10)


def test_pin_root_is_created_0700_by_root(ns: Netns, sockets, own_root: str) -> None:
    st = Steering.attach([sockets()], [20000], pin_root=own_root)
    info = os.stat(own_root)
    assert (info.st_uid, info.st_mode & 0o7777) == (0, 0o700)
    st.close()


@pytest.mark.parametrize(
    "owner, mode, reason",
    [
        (65534, 0o700, "is owned by uid 65534, not root"),
        (0, 0o1777, "is writable by group or others (mode 1777)"),
        (0, 0o770, "is writable by group or others (mode 0770)"),
    ],
)
def test_an_untrusted_pin_root_is_refused(
    ns: Netns, sockets, own_root: str, owner: int, mode: int, reason: str
) -> None:
    os.mkdir(own_root)
    os.chown(own_root, owner, -1)
    os.chmod(own_root, mode)
    srv = sockets()
    with pytest.raises(SteeringUnavailable) as info:
        Steering.attach([srv], [20000], pin_root=own_root)
    assert str(info.value) == f"{own_root} {reason}"
    assert os.listdir(own_root) == []  # nothing pinned where others could replace it
    assert sk_lookup_links(ns) == []
    assert refused("127.0.0.1", 20000)


def test_a_lock_held_by_another_process_fails_attach_and_close_in_seconds(
    ns: Netns, sockets, own_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pins, "LOCK_TIMEOUT", 1.0)
    os.mkdir(own_root, 0o700)
    srv = sockets()
    with locked_by_another_process(own_root) as pid:
        started = time.monotonic()
        with pytest.raises(SteeringUnavailable) as info:
            Steering.attach([srv], [20000], pin_root=own_root)
        assert time.monotonic() - started < 30  # compiling first, then 1 s of waiting
    assert str(info.value) == f"{own_root} is locked by pid {pid} (waited 1s)"
    assert sk_lookup_links(ns) == []

    st = Steering.attach([srv], [20000], pin_root=own_root)  # free again: it attaches
    with locked_by_another_process(own_root) as pid:
        started = time.monotonic()
        with pytest.raises(SteeringUnavailable, match=f"locked by pid {pid}"):
            st.close()
        assert time.monotonic() - started < 5
    with pytest.raises(SteeringUnavailable, match="closed"):
        st.read_ports()  # our descriptors are released all the same


def test_allow_and_deny_are_refused_in_the_program(ns: Netns, sockets, attach) -> None:
    """Admission control: a 10,000-entry Deny list and an Allow list, as LPM tries; a
    refused client gets a reset (SK_DROP) and never reaches the listening socket."""
    srv = sockets()
    st = attach([srv], [20000, 20001])

    def key(policy: int, cidr: str) -> bytes:
        net = ipaddress.ip_network(cidr)
        if net.version == 4:
            return acl_key(policy, net.prefixlen + 96, (0xFFFF << 32) | int(net.network_address))
        return acl_key(policy, net.prefixlen, int(net.network_address))

    deny = {key(7, f"10.{i >> 8}.{i & 255}.0/24") for i in range(9_999)} | {key(7, "127.0.0.2/32")}
    st.set_admission({20000: 7, 20001: 8 | POLICY_HAS_ALLOW}, [key(8, "::1/128")], deny)

    def refused_from(source: str, port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT,
                                     source_address=(source, 0)).close()  # fmt: skip
        except ConnectionRefusedError:
            return True
        return False

    assert refused_from("127.0.0.2", 20000)
    assert nothing_pending(srv)
    assert_steered(srv, "127.0.0.1", 20000)
    assert refused_from("127.0.0.1", 20001)  # not in Allow
    assert_steered(srv, "::1", 20001)
    assert st.counters()["denied"] == 2
    assert st.denied() == {7: 1, 8: 1}
    st.set_admission({}, [], [])  # lists gone: everyone steered again
    client, accepted = accept_on(srv, "127.0.0.1", 20001)
    client.close()
    accepted.close()
    assert st.denied() == {}
