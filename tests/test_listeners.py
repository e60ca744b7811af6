"""listeners.listening_ports(): the one sock_diag dump that stands in for a trial bind per
port when bpf steering checks its ports are free."""

from __future__ import annotations

import socket

from fastproxy.listeners.sockets import listening_ports


def test_listening_ports_are_the_listeners_of_both_families_and_nothing_else() -> None:
    with (
        socket.socket() as v4,
        socket.socket(socket.AF_INET6) as v6,
        socket.socket() as bound,
        socket.socket() as client,
    ):
        v4.bind(("127.0.0.1", 0))
        v4.listen()
        v6.bind(("::1", 0))
        v6.listen()
        bound.bind(("127.0.0.1", 0))  # bound, not listening: nothing to shadow
        client.connect(v4.getsockname())  # its local port is an ephemeral one
        ports = listening_ports()
        assert ports is not None
        assert v4.getsockname()[1] in ports and v6.getsockname()[1] in ports
        assert bound.getsockname()[1] not in ports
        assert client.getsockname()[1] not in ports


def test_listening_ports_reads_a_dump_of_many_messages() -> None:
    """600 listeners: the kernel's answer spans several recv() calls."""
    socks = [socket.socket() for _ in range(600)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        ports = listening_ports()
        assert ports is not None
        assert {sock.getsockname()[1] for sock in socks} <= ports
    finally:
        for sock in socks:
            sock.close()
