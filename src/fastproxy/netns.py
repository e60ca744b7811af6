"""Network namespaces for tests and benchmarks: create, enter (this thread only), delete.

A namespace is entered with setns(CLONE_NEWNET) on the calling thread alone, never with
`ip netns exec`: that also unshares the mount namespace and remounts /sys, so bpffs pins made
in one `ip netns exec` session are invisible in the next. Sockets keep the namespace they
were created in, so a test can create its sockets inside `entered()` and use them anywhere.
Subprocesses inherit the namespace of the thread that starts them; `nsenter_argv()` makes
that explicit.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import subprocess
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()


def path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def create(name: str) -> str:
    """`ip netns add NAME` with loopback up; returns its /run/netns path."""
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
    except BaseException:
        delete(name)
        raise
    return path(name)


def delete(name: str) -> None:
    """Remove the name; the namespace itself goes when its last socket or process does."""
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip("netns", "delete", name)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at fd."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(ns_path: str) -> Iterator[None]:
    """Run the body with the calling thread in the namespace at ns_path, then go back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


@contextlib.contextmanager
def temporary(prefix: str = "fp") -> Iterator[str]:
    """A fresh namespace (lo up) for the body, entered on this thread; deleted afterwards.

    Yields its name."""
    name = f"{prefix}-{os.getpid()}-{next(_counter)}"
    ns_path = create(name)
    try:
        with entered(ns_path):
            yield name
    finally:
        delete(name)


def inode(ns_path: str = "/proc/thread-self/ns/net") -> int:
    """The namespace's inode number: its identity (bpftool's netns_ino)."""
    return os.stat(ns_path).st_ino


def nsenter_argv(name: str, *argv: str) -> list[str]:
    """argv running a command in the named namespace (network only, mounts untouched)."""
    return ["nsenter", f"--net={path(name)}", *argv]
