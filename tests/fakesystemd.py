"""A stand-in for systemd's side of sd_notify(3) and sd_listen_fds(3): it keeps the
descriptors a service stores (FDSTORE=1, FDNAME=, FDSTOREREMOVE=1) and passes them to the
next start in LISTEN_FDS/LISTEN_FDNAMES, at fd 3 onwards, with LISTEN_PID set to the
started process's own pid (through a small launcher that execs the service)."""

from __future__ import annotations

import array
import os
import socket
import sys
from pathlib import Path
from typing import Any

from proxyproc import Proxy

# Runs in the child: moves the passed fds to 3, 4, ... and execs the service, as systemd
# does after its fork (LISTEN_PID must be the service's pid, known only there).
LAUNCHER = """
import fcntl, os, sys
fds = [int(x) for x in sys.argv[1].split(",") if x]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1000) for fd in fds]
for fd in fds:
    os.close(fd)
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)
    os.close(fd)
if fds:
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)),
                      LISTEN_FDNAMES=sys.argv[2])
os.execv(sys.argv[3], sys.argv[3:])
"""


class FakeSystemd:
    def __init__(self, directory: Path) -> None:
        self.address = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)
        self.store: dict[str, int] = {}  # FDNAME -> our copy of the descriptor
        self.messages: list[list[str]] = []

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address, "FDSTORE": "100000"}

    def receive(self) -> None:
        """Take every message that has arrived (non-blocking)."""
        while True:
            fds = array.array("i")
            try:
                data, ancdata, _, _ = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(253 * fds.itemsize), socket.MSG_DONTWAIT
                )
            except BlockingIOError:
                return
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            fields = data.decode().split("\n")
            self.messages.append(fields)
            name = next((f[7:] for f in fields if f.startswith("FDNAME=")), "stored")
            if "FDSTORE=1" in fields:
                for fd in fds:
                    old = self.store.pop(name, None)
                    if old is not None:
                        os.close(old)
                    self.store[name] = fd
            else:
                for fd in fds:
                    os.close(fd)
            if "FDSTOREREMOVE=1" in fields and name in self.store:
                os.close(self.store.pop(name))

    def start(self, directory: Path, config: dict[str, Any], *args: str) -> Proxy:
        """Start the service with the stored descriptors, as systemd would."""
        self.receive()
        names, fds = list(self.store), list(self.store.values())
        directory.mkdir(exist_ok=True)
        return Proxy(
            directory,
            config,
            *args,
            prefix=[sys.executable, "-c", LAUNCHER, ",".join(map(str, fds)), ":".join(names)],
            env=self.env(),
            pass_fds=tuple(fds),
        )

    def close(self) -> None:
        for fd in self.store.values():
            os.close(fd)
        self.store.clear()
        self.sock.close()
