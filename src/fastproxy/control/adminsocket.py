"""The admin API's unix socket (SPEC section 12): how the CLI reaches the running
proxy without sending its token to a TCP port that any local user could have bound
while the proxy was down. The socket is 0600 and owned by the proxy's user, in a
directory kept like the control socket's (0700, the proxy's user's, see handover.py);
the CLI checks with SO_PEERCRED that whoever serves it is root, itself, or the owner
of that directory before it sends anything."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

from .handover import peer_uid, private_directory

DEFAULT_PATH = "/run/fastproxy/admin.sock"


class AdminSocketError(OSError):
    """One-line reason the admin socket cannot be served or used."""


def bind(path: str, owner: int | None = None) -> socket.socket:
    """A unix socket listening at `path`, mode 0600, owned by `owner` (default: us;
    root hands it to the user it is about to become). A live socket already there
    (another fastproxy) is refused; a stale one is replaced."""
    private_directory(path, owner, what="admin socket")
    if _answers(path):
        raise AdminSocketError(
            f"admin socket {path} is in use by a running fastproxy"
            " (--takeover to replace it, or another --admin-socket)"
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # 0600 from the start: no moment others may connect
    try:
        sock.bind(path)
        if owner is not None and owner != os.geteuid():
            os.chown(path, owner, -1)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    return sock


def _answers(path: str) -> bool:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(mode):
        raise AdminSocketError(f"admin socket {path}: exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False  # left by a process that is gone
            raise
    return True


def remove(path: str, sock: socket.socket) -> None:
    """Unlink `path` if it is still `sock`'s (not a successor's, bound since)."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == os.fstat(sock.fileno()).st_ino:
            os.unlink(path)


def connect(path: str, timeout: float) -> socket.socket:
    """Connected to the proxy serving `path`, once it is known to be trusted."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        pid, uid = peer_uid(sock)
        if uid not in (0, os.geteuid(), _directory_owner(path)):
            raise AdminSocketError(
                f"refusing to talk to {path}: it is served by uid {uid} (pid {pid}), not"
                " root, us, or the owner of its directory"
            )
    except BaseException:
        sock.close()
        raise
    return sock


def _directory_owner(path: str) -> int | None:
    """The owner of the socket's directory when only that owner (and root) can put a
    socket there: then whoever serves it is that directory's user (the proxy's)."""
    st = os.stat(os.path.dirname(os.path.abspath(path)))
    return None if st.st_mode & 0o022 else st.st_uid
