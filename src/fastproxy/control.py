"""The control socket: how a new fastproxy takes over from a running one with no
refused and no cut connection (as HAProxy's `-x` does).

    new process                          running process
    -----------                          ---------------
    connect, "TAKEOVER\\n"          ->
                                   <-    header (JSON) + listening sockets (SCM_RIGHTS)
    start accepting on them
    "READY\\n"                      ->    stop accepting, drain, exit

Both accept on the same sockets for a moment, which is harmless: each connection
is accepted once. Until READY the running process changes nothing, so a new
process that fails leaves it serving as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("fastproxy")

DEFAULT_PATH = "/run/fastproxy/control.sock"
FDS_PER_MESSAGE = 200  # the kernel takes at most 253 descriptors per SCM_RIGHTS message
HANDOVER_TIMEOUT = 60.0


class TakeoverError(Exception):
    """One-line reason the takeover did not happen."""


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


def _recv_handover(conn: socket.socket) -> Handover:
    (size,) = struct.unpack("!I", _recv_exact(conn, 4))
    header = json.loads(_recv_exact(conn, size))
    fds: list[int] = []
    while len(fds) < len(header["sockets"]):
        _, got, _, _ = socket.recv_fds(conn, 1, FDS_PER_MESSAGE)
        if not got:
            raise TakeoverError("the running fastproxy sent fewer sockets than announced")
        fds.extend(got)
    socks = [(d, socket.socket(fileno=fd)) for d, fd in zip(header["sockets"], fds)]
    return Handover(header["steering"], socks, header["pid"])


class Successor:
    """The new process's side: holds the connection until READY is sent."""

    def __init__(self, path: str, timeout: float = HANDOVER_TIMEOUT) -> None:
        self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.conn.settimeout(timeout)
        try:
            self.conn.connect(path)
            self.conn.sendall(b"TAKEOVER\n")
            self.handover = _recv_handover(self.conn)
        except OSError as exc:
            self.conn.close()
            raise TakeoverError(f"cannot take over through {path}: {exc.strerror or exc}") from None
        except (ValueError, KeyError, struct.error) as exc:
            self.conn.close()
            raise TakeoverError(f"bad handover from {path}: {exc}") from None

    def ready(self) -> None:
        """We accept now: the running process may stop."""
        with contextlib.suppress(OSError):
            self.conn.sendall(b"READY\n")
            self.conn.recv(16)  # its "BYE": it has stopped accepting
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
    ) -> None:
        self.path = path
        self.handover = handover
        self.lock = lock  # no reload while the sockets are being handed over
        self.on_successor = on_successor
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
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
                conn.settimeout(HANDOVER_TIMEOUT)
                try:
                    if self._handle(conn):
                        return
                except OSError as exc:
                    log.warning("takeover failed, still serving: %s", exc)

    def _handle(self, conn: socket.socket) -> bool:
        request = conn.recv(64)
        if request != b"TAKEOVER\n":
            conn.sendall(b"ERROR unknown request\n")
            return False
        with self.lock:
            _send_handover(conn, self.handover())
            log.info("takeover: listening sockets handed over, waiting for the new process")
            if conn.recv(16) != b"READY\n":
                log.warning("takeover: the new process gave up; still serving")
                return False
            self.on_successor()
            conn.sendall(b"BYE\n")
            return True

    def close(self) -> None:
        # Unlink only our own socket: after a takeover the path is the successor's.
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        self.sock.close()
