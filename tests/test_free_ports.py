"""The tests' port picker: a port it hands out must still be free when the proxy binds
it, on a dual-stack [::] socket too. CI once failed with "cannot listen on
[::]:60937: Address already in use": the picker took a port from bind(0) on 127.0.0.1,
a port in the range every connect() and bind(0) on the machine draws from, and checked
no other address."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from proxyproc import _FIRST_CHOSEN_PORT, free_ports


def ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_ports_come_from_below_the_ephemeral_range_and_never_twice() -> None:
    # Fails with bind(0): the kernel hands out ports from inside that range.
    low, _ = ephemeral_range()
    first, second = free_ports(20), free_ports(20)
    assert all(port < low for port in first + second)
    assert len(set(first + second)) == 40


def test_a_port_busy_only_on_ipv6_loopback_is_not_handed_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fails with a trial bind on 127.0.0.1 only, which a socket on ::1 does not meet.
    busy = socket.socket(socket.AF_INET6)
    low, _ = ephemeral_range()
    for held in range(_FIRST_CHOSEN_PORT, low):  # where the picker looks
        try:
            busy.bind(("::1", held))
            break
        except OSError:
            continue
    busy.listen()
    # The picker tries the held port first (its order is random otherwise).
    monkeypatch.setattr(random, "sample", lambda ports, k: [held, *(p for p in ports if p != held)])
    try:
        (port,) = free_ports(1)
        assert port != held
        with socket.socket(socket.AF_INET6) as dual:  # what a proxy on "::" binds
            dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            dual.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            dual.bind(("::", port))
    finally:
        busy.close()
