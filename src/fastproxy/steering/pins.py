"""Where steering state lives: bpffs, the private pin root, its lock, owner records and
network namespaces."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import stat
import sys
import time
from collections.abc import Iterator

from .bpfsys import libc, link_info, obj_get
from .errors import SteeringUnavailable

DEFAULT_PIN_ROOT = "/sys/fs/bpf/fastproxy"


def open_netns() -> tuple[int, int]:
    """(fd, inode) of the calling thread's network namespace (netns is per thread)."""
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    return fd, os.fstat(fd).st_ino


def netns_inode() -> int:
    """Inode of the calling thread's network namespace: names its pin directory."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def is_bpffs(path: str) -> bool:
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


def ensure_bpffs(pin_root: str) -> None:
    """Mount bpffs on /sys/fs/bpf if pin_root lives there and it is not mounted (boot default).

    Mode 0700: only root may create pins there (the boot default, 1777, lets anyone)."""
    if is_bpffs(pin_root):
        return
    mount_point = "/sys/fs/bpf"
    if not os.path.realpath(pin_root).startswith(mount_point + "/"):
        raise SteeringUnavailable(f"{pin_root} is not on a bpf filesystem")
    os.makedirs(mount_point, exist_ok=True)
    if libc.mount(b"bpf", mount_point.encode(), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise SteeringUnavailable(f"cannot mount bpffs on {mount_point}: {os.strerror(err)}")


def private_pin_root(pin_root: str) -> None:
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


def dropped() -> bool:
    """Running without root, after a privilege drop: root's 0700 pin root is out of reach."""
    return os.geteuid() != 0


LOCK_TIMEOUT = 10.0  # seconds: held for milliseconds by a fastproxy at work; longer is a fault


@contextlib.contextmanager
def locked(directory: str, timeout: float | None = None) -> Iterator[None]:
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


def owner_record(pid: int) -> str:
    return f"{pid}:{_start_time(pid)}"


def read_owner(directory: str) -> tuple[int, bool] | None:
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


def live_owner(pin_root: str) -> tuple[int, str] | None:
    """(pid, pin directory) of another live fastproxy steering this network namespace,
    None when there is none or we cannot see (the pin root is root's)."""
    try:
        directory = os.path.join(pin_root, str(netns_inode()))
    except OSError:
        return None
    owner = read_owner(directory)
    if owner is None or not owner[1] or owner[0] == os.getpid():
        return None
    return owner[0], directory


def steered_ports(directory: str) -> set[int] | None:
    """The ports the program pinned in `directory` steers, None if they cannot be read."""
    from .bpfsys import map_keys, obj_get

    try:
        fd = obj_get(os.path.join(directory, "ports"))
    except OSError:
        return None
    try:
        return {int.from_bytes(key, sys.byteorder) for key in map_keys(fd, 2)}
    except OSError:
        return None
    finally:
        os.close(fd)


def unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def sweep_dead_namespaces(pin_root: str, current_ino: int) -> None:
    """Remove pin directories of network namespaces that no longer exist.

    A netns deleted under a crashed proxy leaves its pins behind; its link then reports netns
    inode 0 ("defunct"). Nothing can ever use them again, and the inode number may be reused."""
    for name in os.listdir(pin_root):
        if name == str(current_ino) or not name.isdigit():
            continue
        directory = os.path.join(pin_root, name)
        try:
            fd = obj_get(os.path.join(directory, "link"))
        except OSError:
            continue  # no link pinned: not ours to judge
        try:
            defunct = link_info(fd).netns_ino == 0
        except OSError:
            defunct = False
        finally:
            os.close(fd)
        if defunct:
            with contextlib.suppress(OSError):
                remove_dir(directory)


def remove_dir(directory: str) -> None:
    """Unpin everything in a pin directory, then remove it."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            unlink(os.path.join(directory, name))
        os.rmdir(directory)
