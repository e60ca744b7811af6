"""The control socket: how a new fastproxy takes over from a running one with no
refused and no cut connection (as HAProxy's `-x` does).

    new process                          running process
    -----------                          ---------------
    connect, "TAKEOVER\\n"          ->
                                   <-    header (JSON) + listening sockets (SCM_RIGHTS)
    bind and load everything, accepting nothing yet
    "READY\\n"                      ->    stop accepting
                                   <-    "BYE\\n"; drain, exit
    accept; swap in its steering program

Two phases: until READY nothing the new process does changes what the running one
serves (it holds copies of the same sockets and a steering program it has not
attached), so a new process that fails, is stopped or is killed at any step before
READY leaves the running one serving as before; the running one still checks that
its steering program is in effect when a successor goes away without READY.
Clients arriving between READY and the new process accepting wait in the same
sockets' accept queues: none is refused.

Whoever gets the sockets can serve our ports, so the socket lives in a private
directory (0700, owned by the proxy's user) and both ends check the other with
SO_PEERCRED: only root or the proxy's own user may take over, or hand over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("fastproxy")

DEFAULT_PATH = "/run/fastproxy/control.sock"
FDS_PER_MESSAGE = 200  # the kernel takes at most 253 descriptors per SCM_RIGHTS message
HANDOVER_TIMEOUT = 60.0
REQUEST_TIMEOUT = 5.0  # for the request line: a silent peer must not block upgrades


class TakeoverError(Exception):
    """One-line reason the takeover did not happen."""


class UnsafeDirectory(OSError):
    """The control socket's directory cannot be trusted; str() is one line."""


def private_directory(path: str, owner: int | None = None, what: str = "control socket") -> None:
    """Make the directory of the socket at `path` safe to hand out listening sockets
    from: created 0700 if missing; else it must be owned by `owner` (default: us)
    and not writable by group or others. Root may hand a root-owned one (systemd's
    RuntimeDirectory) to `owner`, the user it is about to become. `what`: the socket,
    for messages."""
    directory = os.path.dirname(path) or "."
    uid = os.geteuid() if owner is None else owner
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)  # the umask can only take bits away
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"{what} directory {directory} is not a directory")
    if st.st_uid != uid and not (st.st_uid == 0 and os.geteuid() == 0):
        raise UnsafeDirectory(
            f"{what} directory {directory} is owned by uid {st.st_uid}, not {uid}"
        )
    if st.st_mode & 0o022:
        raise UnsafeDirectory(
            f"{what} directory {directory} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o})"
        )
    if st.st_uid != uid:
        os.chown(directory, uid, -1)


def peer_uid(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a unix socket."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", creds)
    return pid, uid


def _trusted(uid: int, also: int | None = None) -> bool:
    """Root, our own user, or (for a new process about to drop to it) the proxy's user."""
    return uid in (0, os.geteuid()) or uid == also


@dataclass
class Handover:
    """Listening sockets as handed from one process to the next."""

    steering: str  # "bpf" or "ports"
    sockets: list[tuple[dict[str, Any], socket.socket]]  # (description, socket)
    pid: int = 0

    def take(self, role: str) -> list[tuple[dict[str, Any], socket.socket]]:
        return [(d, s) for d, s in self.sockets if d["role"] == role]


def _send_handover(conn: socket.socket, handover: Handover) -> None:
    header = json.dumps(
        {
            "pid": os.getpid(),
            "steering": handover.steering,
            "sockets": [d for d, _ in handover.sockets],
        }
    ).encode()
    conn.sendall(struct.pack("!I", len(header)) + header)
    fds = [s.fileno() for _, s in handover.sockets]
    for start in range(0, len(fds), FDS_PER_MESSAGE):
        socket.send_fds(conn, [b"F"], fds[start : start + FDS_PER_MESSAGE])


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise TakeoverError("the running fastproxy closed the control connection")
        data += chunk
    return data


MAX_HEADER = 16 << 20  # a JSON line per socket: far below this for 65,535 ports


def _recv_handover(conn: socket.socket) -> Handover:
    (size,) = struct.unpack("!I", _recv_exact(conn, 4))
    if size > MAX_HEADER:
        raise TakeoverError(f"handover header too large ({size} bytes)")
    header = json.loads(_recv_exact(conn, size))
    descriptions = header["sockets"]
    if not isinstance(descriptions, list) or not all(isinstance(d, dict) for d in descriptions):
        raise TakeoverError("bad handover: the socket list is malformed")
    fds: list[int] = []
    try:
        while len(fds) < len(descriptions):
            _, got, flags, _ = socket.recv_fds(conn, 1, FDS_PER_MESSAGE)
            fds.extend(got)
            if flags & socket.MSG_CTRUNC:
                # Descriptors the kernel could not install (our fd limit): some sockets
                # would be missing, and a partial takeover would drop their ports.
                raise TakeoverError("sockets lost in the handover (descriptor limit?)")
            if not got:
                raise TakeoverError("the running fastproxy sent fewer sockets than announced")
        socks = [(d, socket.socket(fileno=fd)) for d, fd in zip(descriptions, fds)]
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    for fd in fds[len(descriptions) :]:
        os.close(fd)  # more than announced: not ours to keep
    return Handover(str(header["steering"]), socks, int(header["pid"]))


class Successor:
    """The new process's side: holds the connection until READY is sent."""

    def __init__(
        self, path: str, timeout: float = HANDOVER_TIMEOUT, proxy_uid: int | None = None
    ) -> None:
        """`proxy_uid`: the user the running proxy may have dropped to (its `User`)."""
        self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.conn.settimeout(timeout)
        try:
            self.conn.connect(path)
            pid, uid = peer_uid(self.conn)
            if not _trusted(uid, proxy_uid):
                raise TakeoverError(
                    f"refusing to take over through {path}: it is served by uid {uid} "
                    f"(pid {pid}), not root or our own user"
                )
            self.conn.sendall(b"TAKEOVER\n")
            self.handover = _recv_handover(self.conn)
        except TakeoverError:
            self.conn.close()
            raise
        except (BrokenPipeError, ConnectionResetError):
            self.conn.close()
            raise TakeoverError(
                f"cannot take over through {path}: the running fastproxy hung up "
                "(it hands over to root and its own user only)"
            ) from None
        except OSError as exc:
            self.conn.close()
            raise TakeoverError(f"cannot take over through {path}: {exc.strerror or exc}") from None
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            self.conn.close()
            raise TakeoverError(f"bad handover from {path}: {exc}") from None

    def ready(self) -> None:
        """We are about to accept: the running process stops first. Returns when it
        has (its "BYE"), or has gone away: either way we serve from now on."""
        with contextlib.suppress(OSError):
            self.conn.sendall(b"READY\n")
            self.conn.recv(16)
        self.conn.close()

    def abandon(self) -> None:
        self.conn.close()
        for _, sock in self.handover.sockets:
            sock.close()


class ControlServer:
    """The running process's side: a unix socket taking TAKEOVER requests."""

    def __init__(
        self,
        path: str,
        handover: Callable[[], Handover],
        lock: threading.RLock,
        on_successor: Callable[[], None],
        on_abandoned: Callable[[], None],
    ) -> None:
        self.path = path
        self.handover = handover
        self.lock = lock  # no reload while the sockets are being handed over
        self.on_successor = on_successor
        self.on_abandoned = on_abandoned
        private_directory(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._bind()
        self._ino = os.stat(path).st_ino
        self._thread = threading.Thread(target=self._serve, name="fastproxy-control", daemon=True)

    def _bind(self) -> None:
        # A successor binds over our path (we still hold our socket, unlinked).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        old_umask = os.umask(0o077)  # root only: this hands out listening sockets
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old_umask)
        self.sock.listen(4)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    if self._refused(conn):
                        continue
                    if self._handle(conn):
                        return
                except Exception as exc:  # this thread must outlive any one peer
                    log.warning("takeover failed, still serving: %s", exc)

    @staticmethod
    def _refused(conn: socket.socket) -> bool:
        pid, uid = peer_uid(conn)
        if _trusted(uid):
            return False
        log.warning("control socket: refused pid %d of uid %d (not root or our user)", pid, uid)
        return True

    def _handle(self, conn: socket.socket) -> bool:
        conn.settimeout(REQUEST_TIMEOUT)
        request = conn.recv(64)
        conn.settimeout(HANDOVER_TIMEOUT)
        if request != b"TAKEOVER\n":
            conn.sendall(b"ERROR unknown request\n")
            return False
        with self.lock:
            try:
                _send_handover(conn, self.handover())
                log.info("takeover: listening sockets handed over, waiting for the new process")
                answer = conn.recv(16)
            except OSError:
                answer = b""
            if answer != b"READY\n":
                log.warning("takeover: the new process gave up; still serving")
                self.on_abandoned()
                return False
            self.on_successor()
            with contextlib.suppress(OSError):
                conn.sendall(b"BYE\n")
            return True

    def close(self) -> None:
        # Unlink only our own socket: after a takeover the path is the successor's.
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        self.sock.close()
