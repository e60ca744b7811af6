"""systemd's file descriptor store and socket activation: listening sockets that outlive
the process, so that `systemctl restart` refuses no client.

While serving, every listening socket (each port's, or the steered one in bpf mode, and
the admin endpoint's) is given to the service manager (`FDSTORE=1`, one `FDNAME=` each)
and taken out again when a reload closes it (`FDSTOREREMOVE=1`). At the next start the
manager passes them back in `LISTEN_FDS`/`LISTEN_FDNAMES` (sd_listen_fds(3)); they are
adopted as a predecessor's sockets are in an upgrade. Between the two processes nobody
accepts, but the sockets keep listening: clients wait in their backlog, and in bpf mode
the pinned program keeps steering into the kept socket. A `.socket` unit's sockets
(socket activation) arrive the same way, under names we did not choose: they are known
by the port they listen on.

Only when the manager says it keeps descriptors ($FDSTORE, set by systemd when
FileDescriptorStoreMax= is above 0) is anything sent; elsewhere this does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

from ..control.handover import Handover
from ..control.sdnotify import notify_with_fds

log = logging.getLogger("fastproxy")

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
PREFIX = "fp-"  # names we give; others come from a .socket unit


def name_of(desc: dict[str, Any], sock: socket.socket) -> str:
    """A stable name per socket role and address (':' is not allowed in FDNAME)."""
    host = str(sock.getsockname()[0]).replace(":", "_")
    if desc["role"] == "steered":
        return f"{PREFIX}steered-{host}"
    if desc["role"] == "admin":
        return f"{PREFIX}admin-{host}-{desc['port']}"
    return f"{PREFIX}port-{desc['port']}-{host}"


def _describe(name: str, sock: socket.socket, admin: tuple[str, int]) -> dict[str, Any]:
    if name.startswith(f"{PREFIX}steered-"):
        return {"role": "steered"}
    host, port = sock.getsockname()[:2]
    if name.startswith(f"{PREFIX}admin-") or (host, port) == admin:
        return {"role": "admin", "host": host, "port": port}
    return {"role": "port", "port": port}  # ours, or a .socket unit's


def inherited(admin: tuple[str, int]) -> tuple[Handover | None, set[str]]:
    """The listening sockets the service manager passed us, as a Handover (None when it
    passed none), and the names they came under. The LISTEN_* variables are removed:
    they are for this process only."""
    pid = os.environ.pop("LISTEN_PID", "")
    count = os.environ.pop("LISTEN_FDS", "")
    names = os.environ.pop("LISTEN_FDNAMES", "").split(":")
    if pid != str(os.getpid()) or not count.isdigit() or int(count) == 0:
        return None, set()
    described: list[tuple[dict[str, Any], socket.socket]] = []
    for index in range(int(count)):
        fd = LISTEN_FDS_START + index
        name = names[index] if index < len(names) else ""
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError as exc:
            log.warning("systemd passed fd %d (%s) that is not a socket: %s", fd, name, exc)
            continue
        if sock.type != socket.SOCK_STREAM or not listening:
            log.warning("systemd passed fd %d (%s) that is not a listening TCP socket", fd, name)
            sock.close()
            continue
        described.append((_describe(name, sock, admin), sock))
    received = {name for name in names[: int(count)] if name.startswith(PREFIX)}
    if not described:
        return None, received
    steering = "bpf" if any(d["role"] == "steered" for d, _ in described) else "ports"
    log.info("systemd passed %d listening sockets (steering=%s)", len(described), steering)
    return Handover(steering, described, pid=0), received


class FdStore:
    """Keeps the service manager's store in step with the sockets we listen on."""

    def __init__(self, received: set[str] | None = None) -> None:
        limit = os.environ.get("FDSTORE", "0")
        self.enabled = limit.isdigit() and int(limit) > 0
        # What the store holds already: names we gave it in a previous life (a port that
        # a config change removed meanwhile must be taken out of it too).
        self.stored: set[str] = set(received or ())

    def sync(self, described: Iterable[tuple[dict[str, Any], socket.socket]]) -> None:
        """Store the sockets not yet stored; remove the names no longer listened on."""
        if not self.enabled:
            return
        current: dict[str, socket.socket] = {}
        for desc, sock in described:
            if desc["role"] not in ("port", "steered", "admin"):
                continue  # the admin's unix socket is made anew at each start
            try:
                current[name_of(desc, sock)] = sock
            except OSError:
                continue  # closed under us: nothing to keep
        for name, sock in current.items():
            if name not in self.stored and notify_with_fds(
                ["FDSTORE=1", f"FDNAME={name}"], [sock.fileno()]
            ):
                self.stored.add(name)
        for name in sorted(self.stored - current.keys()):
            notify_with_fds(["FDSTOREREMOVE=1", f"FDNAME={name}"], [])
            self.stored.discard(name)
