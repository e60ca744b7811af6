"""systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram of
"KEY=value" lines to the socket named by $NOTIFY_SOCKET (a path, or "@name" for an
abstract address). Outside systemd the variable is unset and this does nothing."""

from __future__ import annotations

import os
import socket
import time


def notify(*fields: str) -> bool:
    """Send the fields ("READY=1", ...); False when not under systemd or it failed."""
    return notify_with_fds(list(fields), [])


def notify_with_fds(fields: list[str], fds: list[int]) -> bool:
    """Send the fields with descriptors attached (SCM_RIGHTS), as FDSTORE=1 needs."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # unset, or a vsock address (virtual machines), which we do not use
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            message = "\n".join(fields).encode()
            if fds:
                socket.send_fds(sock, [message], fds)
            else:
                sock.sendall(message)
    except OSError:
        return False  # the service manager went away: nothing to tell
    return True


def reloading() -> bool:
    """RELOADING=1 with the CLOCK_MONOTONIC time systemd matches the reload against."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")
