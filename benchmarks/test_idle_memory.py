"""Memory per idle connection: 10,000 connections held open through each contender,
the proxy's RSS and the kernel's memory read before and after. Each repetition starts
the proxy afresh (a warm allocator would reuse what the previous round freed)."""

from __future__ import annotations

import socket
import time

import pytest

from bench_backends import Holder, abort
from bench_contenders import CONTENDERS, DIRECT, REPS, Contenders
from bench_procs import HOST, IDLE_CONNECTIONS, kernel_memory, pipes_open, rss_bytes
from bench_report import Figure

BATCH = 500  # connections opened before waiting for the holder to have them all
SETTLE = 0.5  # seconds for the proxy to finish its work on the last batch

# The direct connection's kernel slab per connection in the current round: the part of
# a proxy's beyond it is what the proxy's own two sockets cost.
_direct_slab: dict[int, float] = {}


def open_idle(port: int, holder: Holder, count: int) -> list[socket.socket]:
    """`count` connections to HOST:port, returned once the holder has accepted each
    (through the proxy, if port is a proxy's)."""
    socks: list[socket.socket] = []
    try:
        while len(socks) < count:
            for _ in range(min(BATCH, count - len(socks))):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex((HOST, port))
                socks.append(sock)
            deadline = time.monotonic() + 20
            while holder.count() < len(socks):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{holder.count()} of {len(socks)} connections got through")
                time.sleep(0.002)
    except BaseException:
        for sock in socks:
            abort(sock)
        raise
    return socks


@pytest.mark.parametrize("name", CONTENDERS)
@pytest.mark.parametrize("rep", range(REPS), ids=lambda i: f"rep{i}")
def test_idle_connections(
    benchmark,
    contenders: Contenders,
    figures: dict[str, Figure],
    holder: Holder,
    name: str,
    rep: int,
) -> None:
    contenders.stop(name)  # a fresh process
    contender = contenders.get(name)
    pid = contender.pid
    holder.release()
    time.sleep(SETTLE)
    rss_before = rss_bytes(pid) if pid else 0
    tcp_before, slab_before = kernel_memory()
    socks: list[socket.socket] = []
    try:
        socks = benchmark.pedantic(
            open_idle, (contender.hold_port, holder, IDLE_CONNECTIONS), rounds=1, iterations=1
        )
        time.sleep(SETTLE)
        tcp_after, slab_after = kernel_memory()
        rss_after = rss_bytes(pid) if pid else 0
        pipes = pipes_open(pid) if pid else 0
    finally:
        for sock in socks:
            abort(sock)
        holder.release()
    figure = figures["idle"]
    slab = (slab_after - slab_before) / IDLE_CONNECTIONS
    figure.column("kernel slab B/conn").add(name, slab)
    figure.column("TCP buffers B/conn").add(name, (tcp_after - tcp_before) / IDLE_CONNECTIONS)
    if name == DIRECT:
        _direct_slab[rep] = slab
    else:
        rss = (rss_after - rss_before) / IDLE_CONNECTIONS
        figure.column("proxy RSS B/conn").add(name, rss)
        figure.column("pipes held").add(name, pipes)
        if rep in _direct_slab:
            figure.column("total B/conn").add(name, rss + slab - _direct_slab[rep])
    benchmark.extra_info.update(
        {
            "contender": name,
            "repetition": rep,
            "connections": IDLE_CONNECTIONS,
            "proxy_rss_bytes": [rss_before, rss_after],
            "kernel_slab_bytes": [slab_before, slab_after],
            "tcp_mem_bytes": [tcp_before, tcp_after],
            "pipes": pipes,
        }
    )
