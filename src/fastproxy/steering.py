"""eBPF sk_lookup steering: one listening socket serves every configured port.

`bpf/steer.c` is compiled and loaded with bcc at run time, attached to the current network
namespace with a BPF link, and pinned in bpffs so that it outlives a crash and a restarted or
upgraded proxy replaces it instead of stacking a second program. Per network namespace:

    <pin_root>/<netns inode>/
        prog      the sk_lookup program ("fastproxy_steer")
        link      the BPF link attaching it to the netns: while pinned, the program stays
        ports     hash map, u16 port -> 1: the configured ports
        sockets   sockmap: slot 0 takes IPv4 lookups, slot 1 IPv6 (a dual-stack socket is
                  stored in both)
        counters  per-CPU array: lookups, steered, misses, errors
        owner     symlink whose target is "<pid>:<start time>" of the owning process

bcc is used only to compile and load; everything after that (maps, pins, links) goes through
the raw bpf(2) wrappers below, so pinned objects from another process are handled the same
way as our own.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import importlib.util
import json
import os
import platform
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

DEFAULT_PIN_ROOT = "/sys/fs/bpf/fastproxy"
PROGRAM_NAME = "fastproxy_steer"  # the C function; also the kernel's name for the program
COUNTER_NAMES = ("lookups", "steered", "misses", "errors")  # enum counter in steer.c
MAP_NAMES = ("ports", "sockets", "counters")
SLOT_IPV4, SLOT_IPV6 = 0, 1  # keys of the sockets map (SOCKET_IPV4/6 in steer.c)


class SteeringUnavailable(Exception):
    """BPF steering cannot be used here; str() is a one-line reason."""


# ---------------------------------------------------------------------------------------------
# bpf(2) through ctypes: the few commands we need, each a small struct.pack of union bpf_attr.

_BPF_MAP_LOOKUP_ELEM = 1
_BPF_MAP_UPDATE_ELEM = 2
_BPF_MAP_DELETE_ELEM = 3
_BPF_MAP_GET_NEXT_KEY = 4
_BPF_PROG_LOAD = 5
_BPF_OBJ_PIN = 6
_BPF_OBJ_GET = 7
_BPF_PROG_GET_FD_BY_ID = 13
_BPF_MAP_GET_FD_BY_ID = 14
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_LINK_CREATE = 28
_BPF_LINK_UPDATE = 29
_BPF_LINK_GET_FD_BY_ID = 30
_BPF_LINK_GET_NEXT_ID = 31
_BPF_LINK_DETACH = 34
_CMD_NAMES = {
    value: name[1:] for name, value in list(globals().items()) if name.startswith("_BPF_")
}

_BPF_PROG_TYPE_SK_LOOKUP = 30
_BPF_SK_LOOKUP = 36  # attach type
_BPF_LINK_TYPE_NETNS = 5
_BPF_MAP_TYPE_SOCKMAP = 15

_ATTR_SIZE = 128  # >= every bpf_attr variant used here; the kernel wants the tail zeroed
_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]


def _bpf_attr(cmd: int, attr: ctypes.Array[ctypes.c_char], path: str | None = None) -> int:
    """bpf(cmd, attr, sizeof attr); raises OSError (FileNotFoundError, ...) on failure."""
    ret = _libc.syscall(
        ctypes.c_long(_SYS_BPF), ctypes.c_long(cmd), attr, ctypes.c_ulong(len(attr))
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{_CMD_NAMES.get(cmd, cmd)}: {os.strerror(err)}", path)
    return int(ret)


def _bpf(cmd: int, fmt: str, *fields: object, path: str | None = None) -> int:
    """bpf(cmd, attr) with attr packed from fmt/fields, the rest of union bpf_attr zero."""
    return _bpf_attr(cmd, ctypes.create_string_buffer(struct.pack(fmt, *fields), _ATTR_SIZE), path)


def _addr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


def _buf(data: bytes) -> ctypes.Array[ctypes.c_char]:
    """A C buffer holding exactly `data` (create_string_buffer alone would add a NUL)."""
    return ctypes.create_string_buffer(data, len(data))


def _map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    k, v = _buf(key), ctypes.create_string_buffer(value_size)
    try:
        _bpf(_BPF_MAP_LOOKUP_ELEM, "=I4xQQQ", map_fd, _addr(k), _addr(v), 0)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def _map_update(map_fd: int, key: bytes, value: bytes) -> None:
    k, v = _buf(key), _buf(value)
    _bpf(_BPF_MAP_UPDATE_ELEM, "=I4xQQQ", map_fd, _addr(k), _addr(v), 0)


def _map_delete(map_fd: int, key: bytes) -> bool:
    k = _buf(key)
    try:
        _bpf(_BPF_MAP_DELETE_ELEM, "=I4xQ", map_fd, _addr(k))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def _map_keys(map_fd: int, key_size: int) -> Iterator[bytes]:
    """Every key of a map (GET_NEXT_KEY from no key starts at the first)."""
    key: ctypes.Array[ctypes.c_char] | None = None
    while True:
        nxt = ctypes.create_string_buffer(key_size)
        try:
            _bpf(
                _BPF_MAP_GET_NEXT_KEY,
                "=I4xQQ",
                map_fd,
                0 if key is None else _addr(key),
                _addr(nxt),
            )
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        yield nxt.raw
        key = nxt


def _obj_pin(fd: int, path: str) -> None:
    p = ctypes.create_string_buffer(os.fsencode(path))
    _bpf(_BPF_OBJ_PIN, "=QII", _addr(p), fd, 0, path=path)


def _obj_get(path: str) -> int:
    p = ctypes.create_string_buffer(os.fsencode(path))
    return _bpf(_BPF_OBJ_GET, "=QII", _addr(p), 0, 0, path=path)


def _obj_info(fd: int, size: int, preset: bytes = b"") -> bytes:
    info = ctypes.create_string_buffer(preset, size)
    _bpf(_BPF_OBJ_GET_INFO_BY_FD, "=IIQ", fd, size, _addr(info))
    return info.raw


def _get_fd_by_id(cmd: int, obj_id: int) -> int:
    return _bpf(cmd, "=III", obj_id, 0, 0)


def _link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    return _bpf(_BPF_LINK_CREATE, "=IIII", prog_fd, target_fd, attach_type, 0)


def _link_update(link_fd: int, new_prog_fd: int) -> None:
    _bpf(_BPF_LINK_UPDATE, "=IIII", link_fd, new_prog_fd, 0, 0)


def _link_detach(link_fd: int) -> None:
    _bpf(_BPF_LINK_DETACH, "=I", link_fd)


def _link_ids() -> Iterator[int]:
    """Ids of every BPF link on the system."""
    link_id = 0
    while True:
        attr = ctypes.create_string_buffer(struct.pack("=I", link_id), _ATTR_SIZE)
        try:
            _bpf_attr(_BPF_LINK_GET_NEXT_ID, attr)  # {start_id, next_id (out)}
        except FileNotFoundError:
            return
        link_id = struct.unpack_from("=I", attr.raw, 4)[0]
        yield link_id


@dataclass(frozen=True)
class _LinkInfo:
    link_id: int
    prog_id: int
    netns_ino: int  # 0 once the netns is gone (the link is then "defunct")
    is_sk_lookup: bool


def _link_info(link_fd: int) -> _LinkInfo:
    # struct bpf_link_info: type, id, prog_id, (pad), union { netns: { netns_ino, attach_type } }
    kind, link_id, prog_id, ino, attach = struct.unpack_from("=III4xII", _obj_info(link_fd, 64))
    is_sk_lookup = kind == _BPF_LINK_TYPE_NETNS and attach == _BPF_SK_LOOKUP
    return _LinkInfo(link_id, prog_id, ino, is_sk_lookup)


def _prog_name_and_maps(prog_fd: int) -> tuple[str, list[int]]:
    # struct bpf_prog_info: nr_map_ids at 52, map_ids (pointer, in) at 56, name[16] at 64.
    ids = (ctypes.c_uint32 * 8)()
    preset = struct.pack("=52xIQ", len(ids), ctypes.addressof(ids))
    raw = _obj_info(prog_fd, 128, preset)
    nr_maps = struct.unpack_from("=I", raw, 52)[0]
    name = raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return name, list(ids[: min(nr_maps, len(ids))])


def _map_type(map_fd: int) -> int:
    return int(struct.unpack_from("=I", _obj_info(map_fd, 80))[0])


def _probe_sk_lookup() -> str | None:
    """Load `r0 = SK_PASS; exit` as an sk_lookup program: the kernel says if it has the type."""
    insns = ctypes.create_string_buffer(
        struct.pack("=BBhi", 0xB7, 0, 0, 1) + struct.pack("=BBhi", 0x95, 0, 0, 0)
    )
    license_ = ctypes.create_string_buffer(b"GPL")
    try:
        fd = _bpf(
            _BPF_PROG_LOAD,
            "=IIQQIIQII16sII",
            _BPF_PROG_TYPE_SK_LOOKUP, 2, _addr(insns), _addr(license_),
            0, 0, 0, 0, 0, b"", 0, _BPF_SK_LOOKUP,
        )  # fmt: skip
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return "kernel has no sk_lookup support (needs Linux 5.9 or later)"
        if exc.errno in (errno.EPERM, errno.EACCES):
            return "not permitted to load BPF programs (needs CAP_BPF and CAP_NET_ADMIN)"
        if exc.errno == errno.ENOSYS:
            return "kernel has no bpf() system call"
        return f"cannot load BPF programs: {exc.strerror}"
    os.close(fd)
    return None


# ---------------------------------------------------------------------------------------------
# Environment: source file, netns, bpffs, owner records.


def _source_path() -> str | None:
    """steer.c shipped in the package (fastproxy/bpf/), else the repository's bpf/."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (
        os.path.join(here, "bpf", "steer.c"),
        os.path.join(here, os.pardir, os.pardir, "bpf", "steer.c"),
    ):
        if os.path.isfile(candidate):
            return os.path.normpath(candidate)
    return None


def probe() -> str | None:
    """None if BPF steering can be loaded here, else a one-line reason why not."""
    if os.geteuid() != 0:
        return "not root"
    # Found, not imported: importing loads libbcc and LLVM into this process, which
    # only the compiler child (see _compile) should carry.
    if importlib.util.find_spec("bcc") is None:
        if os.path.isdir("/usr/lib/python3/dist-packages/bcc"):
            return f"bcc not importable by {sys.executable} (link it: scripts/link-bcc.sh)"
        return "bcc not importable (install python3-bpfcc)"
    build = f"/lib/modules/{os.uname().release}/build"
    if not os.path.isdir(build):
        return f"kernel headers missing at {build} (run scripts/install-system-deps.sh)"
    if _source_path() is None:
        return "BPF source steer.c not found (neither in the package nor in bpf/)"
    return _probe_sk_lookup()


def _netns() -> tuple[int, int]:
    """(fd, inode) of the calling thread's network namespace (netns is per thread)."""
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    return fd, os.fstat(fd).st_ino


def netns_inode() -> int:
    """Inode of the calling thread's network namespace: names its pin directory."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def _is_bpffs(path: str) -> bool:
    """Whether path is on a bpf filesystem (by the longest matching mount point)."""
    path = os.path.realpath(path)
    best, best_type = "", ""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 3:
                continue
            point = fields[1].replace("\\040", " ")
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, best_type = point, fields[2]
    return best_type == "bpf"


def _ensure_bpffs(pin_root: str) -> None:
    """Mount bpffs on /sys/fs/bpf if pin_root lives there and it is not mounted (boot default).

    Mode 0700: only root may create pins there (the boot default, 1777, lets anyone)."""
    if _is_bpffs(pin_root):
        return
    mount_point = "/sys/fs/bpf"
    if not os.path.realpath(pin_root).startswith(mount_point + "/"):
        raise SteeringUnavailable(f"{pin_root} is not on a bpf filesystem")
    os.makedirs(mount_point, exist_ok=True)
    if _libc.mount(b"bpf", mount_point.encode(), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise SteeringUnavailable(f"cannot mount bpffs on {mount_point}: {os.strerror(err)}")


def _private_pin_root(pin_root: str) -> None:
    """Create pin_root 0700, or check that an existing one is root's and writable by
    root only: whoever can write there can replace the program steering our ports, and
    whoever owns it can lock us out."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(pin_root, 0o700)
    st = os.lstat(pin_root)
    if not stat.S_ISDIR(st.st_mode):
        raise SteeringUnavailable(f"{pin_root} is not a directory")
    if st.st_uid != 0:
        raise SteeringUnavailable(f"{pin_root} is owned by uid {st.st_uid}, not root")
    if st.st_mode & 0o022:
        raise SteeringUnavailable(
            f"{pin_root} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
        )
    if st.st_mode & 0o077:
        os.chmod(pin_root, 0o700)  # made by an older version: readable by all


def _dropped() -> bool:
    """Running without root, after a privilege drop: root's 0700 pin root is out of reach."""
    return os.geteuid() != 0


LOCK_TIMEOUT = 10.0  # seconds: held for milliseconds by a fastproxy at work; longer is a fault


@contextlib.contextmanager
def _locked(directory: str, timeout: float | None = None) -> Iterator[None]:
    """Exclusive flock on a directory: attaches and closes never interleave. A lock
    held for longer than `timeout` (default LOCK_TIMEOUT) is an error, not a hang."""
    wait = LOCK_TIMEOUT if timeout is None else timeout
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SteeringUnavailable(
                        f"{directory} is locked by {_lock_holder(fd)} (waited {wait:g}s)"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _lock_holder(fd: int) -> str:
    """'pid N' holding a flock on fd's file, from /proc/locks, for the message."""
    st = os.fstat(fd)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with contextlib.suppress(OSError), open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == wanted:
                return f"pid {fields[4]}"
    return "another process"


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None if gone or a zombie.

    Kept with the pid so that a recycled pid is not mistaken for a live owner."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # comm may hold spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _owner_record(pid: int) -> str:
    return f"{pid}:{_start_time(pid)}"


def _read_owner(directory: str) -> tuple[int, bool] | None:
    """(pid, alive) of the recorded owner, None when there is no record."""
    try:
        record = os.readlink(os.path.join(directory, "owner"))
    except OSError:
        return None
    pid_text, _, start_text = record.partition(":")
    try:
        pid, start = int(pid_text), int(start_text)
    except ValueError:
        return (0, False)
    return pid, _start_time(pid) == start


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def _stderr_captured() -> Iterator[IO[bytes]]:
    """Send fd 2 to a temporary file: bcc's clang and the verifier write there directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield tmp
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _first_error(tmp: IO[bytes], fallback: str) -> str:
    tmp.seek(0)
    lines = [ln.strip() for ln in tmp.read().decode(errors="replace").splitlines() if ln.strip()]
    for line in lines:
        if "error" in line.lower():
            return line
    return lines[-1] if lines else fallback


# ---------------------------------------------------------------------------------------------
# The loaded objects and their pins.


@dataclass
class _Objects:
    """File descriptors of one loaded program and its maps (and link, once attached)."""

    fds: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compile() -> _Objects:
    """Compile and load bpf/steer.c in a short-lived child process, which hands the
    program's and maps' descriptors back over a socketpair (SCM_RIGHTS). bcc maps
    LLVM into whoever uses it (~130 MiB of RSS that would stay with the proxy for
    its whole life); the child takes that with it when it exits."""
    source = _source_path()
    if source is None:
        raise SteeringUnavailable("BPF source steer.c not found")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        try:
            with theirs:
                # -I: no current directory on the path (a stray copy.py there would
                # shadow the stdlib); this very package is imported by its location.
                code = (
                    f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); "
                    "from fastproxy.steering import _compiler_main; "
                    f"_compiler_main({source!r}, {theirs.fileno()})"
                )
                child = subprocess.run(
                    [sys.executable, "-I", "-c", code],
                    pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=120,
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SteeringUnavailable(f"cannot run the BPF compiler: {exc}") from None
        ours.settimeout(5)
        try:
            data, fds, _, _ = socket.recv_fds(ours, 65536, len(MAP_NAMES) + 1)
        except OSError:
            data, fds = b"", []
    reply = json.loads(data) if data else {}
    if "error" in reply or len(fds) != len(MAP_NAMES) + 1:
        for fd in fds:
            os.close(fd)
        noise = child.stderr.decode(errors="replace").strip().splitlines()
        raise SteeringUnavailable(
            reply.get("error") or f"the BPF compiler failed: {noise[-1] if noise else '?'}"
        )
    return _Objects(dict(zip(("prog", *MAP_NAMES), fds)))


def _compile_here(source: str) -> _Objects:
    """Compile and load with bcc in this process; keep our own duplicates of its fds."""
    from bcc import BPF, lib

    objects = _Objects()
    with _stderr_captured() as noise:
        try:
            bpf = BPF(src_file=source.encode())
        except Exception:
            raise SteeringUnavailable(
                f"cannot compile {source}: {_first_error(noise, 'bcc failed')}"
            ) from None
        try:
            prog = bpf.load_func(
                PROGRAM_NAME.encode(), _BPF_PROG_TYPE_SK_LOOKUP, attach_type=_BPF_SK_LOOKUP
            )
            objects.fds["prog"] = os.dup(prog.fd)
            for name in MAP_NAMES:
                objects.fds[name] = os.dup(lib.bpf_table_fd(bpf.module, name.encode()))
        except Exception as exc:
            objects.close()
            raise SteeringUnavailable(
                f"cannot load {source}: {_first_error(noise, str(exc))}"
            ) from None
        finally:
            bpf.cleanup()  # our dups keep program and maps alive; free bcc's LLVM module
    return objects


def _compiler_main(source: str, fd: int) -> None:
    """The child's side of _compile(): load, send the fds (or the error), exit."""
    with socket.socket(fileno=fd) as channel:
        try:
            objects = _compile_here(source)
        except SteeringUnavailable as exc:
            channel.sendall(json.dumps({"error": str(exc)}).encode())
            return
        fds = [objects.fds["prog"], *(objects.fds[name] for name in MAP_NAMES)]
        socket.send_fds(channel, [json.dumps({"ok": True}).encode()], fds)


def _socket_slots(sockets: list[socket.socket]) -> dict[int, socket.socket]:
    """Which socket takes IPv4 lookups (slot 0) and which IPv6 (slot 1)."""
    if not sockets:
        raise SteeringUnavailable("no listening socket to steer to")
    slots: dict[int, socket.socket] = {}
    claimed: set[int] = set()  # each socket's own family, which no other socket may take
    # Dual-stack sockets first, so that an AF_INET socket given alongside takes IPv4.
    for sock in sorted(sockets, key=lambda s: s.family != socket.AF_INET6):
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise SteeringUnavailable("steering needs TCP sockets (AF_INET or AF_INET6)")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise SteeringUnavailable("steering needs listening sockets (call listen() first)")
        if sock.family == socket.AF_INET:
            serves = [SLOT_IPV4]
        elif sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
            serves = [SLOT_IPV6]
        else:
            serves = [SLOT_IPV6, SLOT_IPV4]  # IPV6_V6ONLY=0 takes IPv4 as ::ffff:a.b.c.d
        if serves[0] in claimed:
            raise SteeringUnavailable(
                "one listening socket per address family (for an SO_REUSEPORT group, pass one)"
            )
        claimed.add(serves[0])
        for slot in serves:
            slots[slot] = sock
    return slots


def _check_ports(ports: Iterable[int]) -> frozenset[int]:
    result = frozenset(int(p) for p in ports)
    bad = sorted(p for p in result if not 1 <= p <= 65535)
    if bad:
        raise ValueError(f"port out of 1..65535: {bad[0]}")
    return result


def _port_key(port: int) -> bytes:
    return struct.pack("=H", port)


def _slot_key(slot: int) -> bytes:
    return struct.pack("=I", slot)


def _sweep_dead_namespaces(pin_root: str, current_ino: int) -> None:
    """Remove pin directories of network namespaces that no longer exist.

    A netns deleted under a crashed proxy leaves its pins behind; its link then reports netns
    inode 0 ("defunct"). Nothing can ever use them again, and the inode number may be reused."""
    for name in os.listdir(pin_root):
        if name == str(current_ino) or not name.isdigit():
            continue
        directory = os.path.join(pin_root, name)
        try:
            fd = _obj_get(os.path.join(directory, "link"))
        except OSError:
            continue  # no link pinned: not ours to judge
        try:
            defunct = _link_info(fd).netns_ino == 0
        except OSError:
            defunct = False
        finally:
            os.close(fd)
        if defunct:
            with contextlib.suppress(OSError):
                _remove_dir(directory)


def _pinned_link(directory: str, ino: int) -> int | None:
    """The pinned link if it still attaches an sk_lookup program to this netns.

    Otherwise (its netns is gone and the inode number was reused, or it is not a link) the
    pin is stale: remove it, so that a new link is created."""
    path = os.path.join(directory, "link")
    try:
        fd = _obj_get(path)
    except FileNotFoundError:
        return None
    try:
        info = _link_info(fd)
    except OSError:
        info = None
    if info and info.is_sk_lookup and info.netns_ino == ino:
        return fd
    os.close(fd)
    _unlink(path)
    return None


def _detach_orphans(ino: int, keep_link_id: int | None, takeover: bool) -> None:
    """Detach fastproxy links in this netns that our pins do not name, if they are stale.

    One whose program still has a socket belongs to a live proxy: refuse, unless taking over."""
    orphans = _orphan_links(ino, keep_link_id)
    try:
        for orphan in orphans:
            if _link_has_socket(orphan) and not takeover:
                raise SteeringUnavailable(
                    "another fastproxy owns steering in this netns (its pins are not "
                    "visible here: was bpffs mounted again, e.g. by `ip netns exec`?)"
                )
        for orphan in orphans:
            _link_detach(orphan)
    finally:
        for orphan in orphans:
            os.close(orphan)


def _orphan_links(ino: int, keep_link_id: int | None) -> list[int]:
    """fastproxy sk_lookup links attached to this netns that our pins do not name.

    They come from a proxy whose pins we cannot see: bpffs mounted afresh (`ip netns exec`
    remounts /sys), or the pin directory removed by hand. Returned as open fds."""
    orphans = []
    for link_id in _link_ids():
        if link_id == keep_link_id:
            continue
        try:
            fd = _get_fd_by_id(_BPF_LINK_GET_FD_BY_ID, link_id)
        except OSError:
            continue  # went away meanwhile
        try:
            info = _link_info(fd)
            mine = info.is_sk_lookup and info.netns_ino == ino and _is_ours(info.prog_id)
        except OSError:
            mine = False
        if mine:
            orphans.append(fd)
        else:
            os.close(fd)
    return orphans


def _is_ours(prog_id: int) -> bool:
    try:
        fd = _get_fd_by_id(_BPF_PROG_GET_FD_BY_ID, prog_id)
    except OSError:
        return False
    try:
        return _prog_name_and_maps(fd)[0] == PROGRAM_NAME
    finally:
        os.close(fd)


def _link_has_socket(link_fd: int) -> bool:
    """Whether the program behind a link still has a listening socket in its sockmap.

    A proxy's socket leaves the sockmap when it is closed, so an empty sockmap means that
    nobody serves through this program any more."""
    prog_fd = _get_fd_by_id(_BPF_PROG_GET_FD_BY_ID, _link_info(link_fd).prog_id)
    try:
        map_ids = _prog_name_and_maps(prog_fd)[1]
    finally:
        os.close(prog_fd)
    for map_id in map_ids:
        map_fd = _get_fd_by_id(_BPF_MAP_GET_FD_BY_ID, map_id)
        try:
            if _map_type(map_fd) == _BPF_MAP_TYPE_SOCKMAP and any(
                _map_lookup(map_fd, _slot_key(slot), 8) for slot in (0, 1)
            ):
                return True
        finally:
            os.close(map_fd)
    return False


# ---------------------------------------------------------------------------------------------


class Steering:
    """sk_lookup steering of the configured ports to our listening socket(s), in this netns."""

    def __init__(
        self, objects: _Objects, directory: str, ino: int, ports: frozenset[int], pin_root: str
    ) -> None:
        self._objects = objects
        self._directory = directory
        self._pin_root = pin_root
        self._ino = ino
        self._ports = ports
        self._pid = os.getpid()
        self._owner = _owner_record(self._pid)
        self._closed = False

    # -- attach ---------------------------------------------------------------------------

    @classmethod
    def attach(
        cls,
        sockets: list[socket.socket],
        ports: Iterable[int],
        *,
        pin_root: str = DEFAULT_PIN_ROOT,
        takeover: bool = False,
    ) -> Steering:
        """Steer `ports` in the calling thread's netns to `sockets` (listening, TCP).

        One dual-stack AF_INET6 socket serves both families; or give one socket per family.
        Pinned state left by a dead owner is replaced in place. A live owner makes this fail,
        unless `takeover`. Every failure is a SteeringUnavailable with a one-line reason."""
        steering = cls.prepare(sockets, ports, pin_root=pin_root)
        try:
            steering.commit(takeover=takeover)
        except BaseException:
            steering.release()
            raise
        return steering

    @classmethod
    def prepare(
        cls, sockets: list[socket.socket], ports: Iterable[int], *, pin_root: str = DEFAULT_PIN_ROOT
    ) -> Steering:
        """Compile and load the program with its maps filled, without putting it in effect:
        nothing that steers connections in this netns changes until commit(). A takeover
        prepares while the running process still serves, and commits only once it has
        handed over, so a successor that fails before that changes nothing."""
        try:
            wanted = _check_ports(ports)
            slots = _socket_slots(list(sockets))
            reason = probe()
            if reason:
                raise SteeringUnavailable(reason)
            _ensure_bpffs(pin_root)
            _private_pin_root(pin_root)
            ino = netns_inode()
            objects = _compile()
            try:
                fds = objects.fds
                for port in sorted(wanted):
                    _map_update(fds["ports"], _port_key(port), b"\x01")
                for slot, sock in slots.items():
                    _map_update(fds["sockets"], _slot_key(slot), struct.pack("=Q", sock.fileno()))
            except BaseException:
                objects.close()
                raise
        except SteeringUnavailable:
            raise
        except Exception as exc:  # one line for the operator, never a traceback
            raise SteeringUnavailable(_describe(exc)) from None
        directory = os.path.join(pin_root, str(ino))
        return cls(objects, directory, ino, wanted, pin_root)

    def commit(self, *, takeover: bool = False) -> None:
        """Put the prepared program in effect and pin it: atomically in place of a previous
        owner's (dead, or handing over to us when `takeover`), else with a new link."""
        try:
            netns_fd, ino = _netns()
            try:
                if ino != self._ino:
                    raise SteeringUnavailable("commit from another network namespace")
                with _locked(self._pin_root):
                    _sweep_dead_namespaces(self._pin_root, ino)
                    self._commit_locked(netns_fd, takeover)
            finally:
                os.close(netns_fd)
        except SteeringUnavailable:
            raise
        except Exception as exc:
            raise SteeringUnavailable(_describe(exc)) from None

    def _commit_locked(self, netns_fd: int, takeover: bool) -> None:
        directory = self._directory
        owner = _read_owner(directory)
        if owner and owner[1] and not takeover:
            pid = owner[0]
            who = "this process" if pid == os.getpid() else f"another fastproxy (pid {pid})"
            raise SteeringUnavailable(f"{who} owns steering in this netns ({directory})")
        fds = self._objects.fds
        os.makedirs(directory, exist_ok=True)
        fds["link"] = self._attach_link(fds["prog"], directory, netns_fd, self._ino, takeover)
        try:
            self._pin(self._objects, directory)
        except BaseException:
            # Our program is in effect but cannot be pinned: take it out again rather than
            # leave a program nobody can find steering ports away (the caller may fall back
            # to `ports` mode). A previous owner's state is gone too: it was dead or handed over.
            with contextlib.suppress(OSError):
                _link_detach(fds["link"])
                _remove_dir(directory)
            raise
        self._owner = _owner_record(os.getpid())

    def in_effect(self) -> bool:
        """Whether our program is the one attached to this netns through our link."""
        try:
            info = _link_info(self._fd("link"))
        except (OSError, KeyError, SteeringUnavailable):
            return False
        return info.netns_ino == self._ino and info.prog_id == self._prog_id()

    def restore(self) -> None:
        """Put our program back in effect (and our pins back) if something replaced or
        detached it: a successor that died or gave up half way through a takeover."""
        dropped = _dropped()  # then the pins are out of reach: being in effect is what counts
        if self.in_effect() and (dropped or self._owns_pins()):
            return
        netns_fd, _ = _netns()
        try:
            with contextlib.nullcontext() if dropped else _locked(self._pin_root):
                fds = self._objects.fds
                link = fds.get("link")
                try:
                    if link is None:
                        raise OSError(errno.ENOLINK, "no link")
                    _link_update(link, fds["prog"])
                except OSError:
                    # Detached links cannot be updated: attach afresh.
                    if link is not None:
                        os.close(fds.pop("link"))
                    if not dropped:  # listing links takes CAP_SYS_ADMIN
                        _detach_orphans(self._ino, None, takeover=True)
                    fds["link"] = _link_create(fds["prog"], netns_fd, _BPF_SK_LOOKUP)
                if dropped:
                    return
                os.makedirs(self._directory, exist_ok=True)
                for name, fd in fds.items():
                    path = os.path.join(self._directory, name)
                    _unlink(path)
                    _obj_pin(fd, path)
                owner = os.path.join(self._directory, "owner")
                _unlink(owner)
                os.symlink(self._owner, owner)
        except OSError as exc:
            raise SteeringUnavailable(f"cannot restore steering: {_describe(exc)}") from None
        finally:
            os.close(netns_fd)

    def _prog_id(self) -> int:
        # struct bpf_prog_info: type, id
        return int(struct.unpack_from("=4xI", _obj_info(self._fd("prog"), 8))[0])

    @staticmethod
    def _attach_link(prog_fd: int, directory: str, netns_fd: int, ino: int, takeover: bool) -> int:
        """Put prog_fd in effect in this netns, with exactly one fastproxy link there.

        A pinned link of a previous owner is updated to the new program (BPF_LINK_UPDATE is
        atomic: no lookup sees neither program, none sees both). Otherwise a new link."""
        link_fd = _pinned_link(directory, ino)
        try:
            keep = None if link_fd is None else _link_info(link_fd).link_id
            _detach_orphans(ino, keep, takeover)
            if link_fd is None:
                return _link_create(prog_fd, netns_fd, _BPF_SK_LOOKUP)
            _link_update(link_fd, prog_fd)
        except BaseException:
            if link_fd is not None:
                os.close(link_fd)
            raise
        return link_fd

    @staticmethod
    def _pin(objects: _Objects, directory: str) -> None:
        """Pin (or re-pin over a previous owner's) program, maps and link, then the owner."""
        for name, fd in objects.fds.items():
            path = os.path.join(directory, name)
            if name == "link" and os.path.exists(path):
                continue  # the same link object, updated in place
            _unlink(path)
            _obj_pin(fd, path)
        owner = os.path.join(directory, "owner")
        _unlink(owner)
        os.symlink(_owner_record(os.getpid()), owner)

    # -- ports ----------------------------------------------------------------------------

    @property
    def ports(self) -> frozenset[int]:
        """The configured ports (as last set through this object)."""
        return self._ports

    def set_ports(self, ports: Iterable[int]) -> None:
        """Change the steered ports in place: new ones first, then remove the old ones.

        In that order no port of both the old and the new set ever stops being steered, and
        connections already accepted are never touched (steering acts on new SYNs only)."""
        wanted = _check_ports(ports)
        fd = self._fd("ports")
        try:
            for port in sorted(wanted - self._ports):
                _map_update(fd, _port_key(port), b"\x01")
                self._ports = self._ports | {port}
            for port in sorted(self._ports - wanted):
                _map_delete(fd, _port_key(port))
                self._ports = self._ports - {port}
        except OSError as exc:
            raise SteeringUnavailable(f"cannot update the port map: {_describe(exc)}") from None

    def read_ports(self) -> frozenset[int]:
        """The ports in the BPF map, read back from the kernel."""
        keys = _map_keys(self._fd("ports"), 2)
        return frozenset(struct.unpack("=H", key)[0] for key in keys)

    # -- observation ----------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """{"lookups", "steered", "misses", "errors"}, summed over CPUs."""
        fd = self._fd("counters")
        size = 8 * _possible_cpus()
        result = {}
        for index, name in enumerate(COUNTER_NAMES):
            raw = _map_lookup(fd, struct.pack("=I", index), size) or b""
            result[name] = sum(struct.unpack(f"={len(raw) // 8}Q", raw))
        return result

    def socket_cookies(self) -> dict[int, int]:
        """Slot -> SO_COOKIE of the socket in the sockmap (slot 0: IPv4, 1: IPv6)."""
        result = {}
        for slot in (SLOT_IPV4, SLOT_IPV6):
            raw = _map_lookup(self._fd("sockets"), _slot_key(slot), 8)
            if raw:
                result[slot] = struct.unpack("=Q", raw)[0]
        return result

    @property
    def directory(self) -> str:
        """Where the state is pinned: <pin_root>/<netns inode>."""
        return self._directory

    @property
    def netns_inode(self) -> int:
        return self._ino

    @property
    def link_id(self) -> int:
        return _link_info(self._fd("link")).link_id

    @property
    def prog_id(self) -> int:
        return _link_info(self._fd("link")).prog_id

    # -- shutdown -------------------------------------------------------------------------

    def close(self) -> None:
        """Detach the program, unpin everything and remove the pin directory (after a
        privilege drop, only detach).

        Only while we still own the state: after a takeover the pins belong to the new
        process, and in a forked child they belong to the parent; then this is release()."""
        if self._closed:
            return
        try:
            if _dropped() and os.getpid() == self._pid:
                # Root's 0700 pin root is out of reach: detach our link (steering stops at
                # once) and leave the pins, which the next start replaces.
                with contextlib.suppress(OSError, KeyError):  # KeyError: never committed
                    _link_detach(self._fd("link"))
                return
            with _locked(self._pin_root):
                if self._owns_pins():
                    # Detach explicitly: unpinning alone would leave the program attached
                    # while any other holder of the link (bpftool, a forked child) lives.
                    with contextlib.suppress(OSError):
                        _link_detach(self._fd("link"))
                    _remove_dir(self._directory)
        except OSError as exc:
            raise SteeringUnavailable(f"cannot remove steering: {_describe(exc)}") from None
        finally:
            self.release()

    def release(self) -> None:
        """Close our descriptors and leave the pinned state (program attached) in place.

        For a takeover: the new process attaches with takeover=True and replaces the program
        atomically. Until then the pinned program keeps steering to the socket(s) in the
        sockmap, which stay there as long as some process keeps them open."""
        self._objects.close()
        self._closed = True

    def __enter__(self) -> Steering:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _owns_pins(self) -> bool:
        if os.getpid() != self._pid:
            return False
        try:
            return os.readlink(os.path.join(self._directory, "owner")) == self._owner
        except OSError:
            return False

    def _fd(self, name: str) -> int:
        if self._closed:
            raise SteeringUnavailable("steering is closed")
        return self._objects.fds[name]


def _remove_dir(directory: str) -> None:
    """Unpin everything in a pin directory, then remove it."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            _unlink(os.path.join(directory, name))
        os.rmdir(directory)


def _possible_cpus() -> int:
    """Number of possible CPUs: the width of a per-CPU map value."""
    with open("/sys/devices/system/cpu/possible") as f:
        spec = f.read().strip()
    count = 0
    for part in spec.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def _describe(exc: BaseException) -> str:
    """One line for an exception: OSError's strerror and filename, or its message."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
