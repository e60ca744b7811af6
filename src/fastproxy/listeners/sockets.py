"""Listening sockets for the `ports` steering mode (one per port and address) and
the single steered socket of the `bpf` mode."""

from __future__ import annotations

import errno
import os
import socket
import struct

BACKLOG = 4096

# sock_diag (linux/inet_diag.h): a dump of this network namespace's listening TCP sockets
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCPF_LISTEN = 1 << 10
NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
INET_DIAG_REQ_V2 = struct.Struct("=BBBxI56x")  # family, protocol, ext, states; no socket id
SPORT_AT = NLMSGHDR.size + 4  # in an inet_diag_msg: family, state, timer, retrans, then sport


class ListenError(Exception):
    """One-line reason a port could not be listened on."""


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def open_listener(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket. "::" is dual stack (IPv4 and IPv6);
    where IPv6 is unavailable it falls back to 0.0.0.0."""
    family = _family(host)
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if host == "::" and exc.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            return open_listener("0.0.0.0", port)
        raise ListenError(f"cannot create a socket for {host}: {exc.strerror}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        # Accepted sockets inherit it: small writes go out at once.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        held = f" (by {holder(port)})" if exc.errno == errno.EADDRINUSE and holder(port) else ""
        raise ListenError(f"cannot listen on {shown}: {exc.strerror}{held}") from None
    return sock


def holder(port: int) -> str:
    """Who listens on `port` in our network namespace ("pid 123, fastproxy"), or "" when
    that cannot be seen (another user's process, as non-root). Error path only: it reads
    /proc/net/tcp* and every process's descriptors."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                for line in list(lines)[1:]:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except (OSError, IndexError, ValueError):
            continue
    for pid in filter(str.isdigit, os.listdir("/proc")) if inodes else ():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    words = cmdline.read().split(b"\0")
                name = " ".join(w.decode(errors="replace") for w in words[:4] if w)
                return f"pid {pid}: {name}"
        except OSError:
            continue
    return ""


def listening_ports() -> set[int] | None:
    """Local ports of the TCP sockets listening in our network namespace (IPv4 and IPv6),
    None when the kernel does not answer sock_diag. One dump, whatever the number of
    ports and of established connections (the kernel walks only its listening table)."""
    ports: set[int] = set()
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
            for family in (socket.AF_INET, socket.AF_INET6):
                ports |= _dump_listening(nl, family)
    except OSError:
        return None
    return ports


def _dump_listening(nl: socket.socket, family: int) -> set[int]:
    request = INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 0, TCPF_LISTEN)
    size = NLMSGHDR.size + len(request)
    nl.send(NLMSGHDR.pack(size, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + request)
    ports: set[int] = set()
    while True:
        data = nl.recv(1 << 16)
        if not data:
            raise OSError(errno.EIO, "sock_diag: no answer")
        at = 0
        while at + NLMSGHDR.size <= len(data):
            length, kind = NLMSGHDR.unpack_from(data, at)[:2]
            if length < NLMSGHDR.size:
                raise OSError(errno.EIO, "sock_diag: malformed answer")
            if kind == NLMSG_DONE:
                return ports
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, at + NLMSGHDR.size)[0]
                raise OSError(code, "sock_diag refused the dump")
            if kind == SOCK_DIAG_BY_FAMILY:
                ports.add(struct.unpack_from("!H", data, at + SPORT_AT)[0])
            at += (length + 3) & ~3


def check_port_free(host: str, port: int) -> None:
    """Steered ports are never bound, so nothing would stop us from shadowing
    another program's listener: a trial bind tells. SO_REUSEADDR makes the bind
    fail only for a listening socket, not for connections lingering in TIME_WAIT."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if _family(host) == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        sock.bind((host, port))
    except OSError as exc:
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        held = f" (by {holder(port)})" if exc.errno == errno.EADDRINUSE and holder(port) else ""
        raise ListenError(f"cannot listen on {shown}: {exc.strerror}{held}") from None
    finally:
        sock.close()
