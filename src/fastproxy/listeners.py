"""Listening sockets for the `ports` steering mode (one per port and address) and
the single steered socket of the `bpf` mode."""

from __future__ import annotations

import errno
import socket

BACKLOG = 4096


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
        raise ListenError(f"cannot listen on {shown}: {exc.strerror}") from None
    return sock


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
        raise ListenError(f"cannot listen on {shown}: {exc.strerror}") from None
    finally:
        sock.close()
