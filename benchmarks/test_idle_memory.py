"""Memory per idle connection: IDLE_CONNECTIONS (5,000 where the fd limit allows)
held open through each contender to a holder that sends nothing; the proxy's RSS and
the kernel's memory read before and after. Each round starts the proxy afresh (a warm
allocator would reuse what the previous round freed)."""

from __future__ import annotations

import socket
import time

from bench_backends import Holder, abort
from bench_contenders import CONTENDERS, DIRECT, Contenders
from bench_procs import HOST, IDLE_CONNECTIONS, kernel_memory, pipes_open, rss_bytes
from bench_series import run_series

BATCH = 500  # connections opened before waiting for the holder to have them all
SETTLE = 0.5  # seconds for the proxy to finish its work on the last batch


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


def test_idle_connections(request, contenders: Contenders, holder: Holder) -> None:
    names = contenders.available(CONTENDERS)
    direct_slab: list[float] = []  # the direct connection's, in the current round

    def measure(name: str) -> tuple[dict[str, float], str]:
        contenders.stop(name)  # a fresh process
        contenders.available([name])
        c = contenders.get(name)
        holder.release()
        time.sleep(SETTLE)
        rss_before = rss_bytes(c.pid) if c.pid else 0
        tcp_before, slab_before = kernel_memory()
        socks: list[socket.socket] = []
        try:
            socks = open_idle(c.hold_port, holder, IDLE_CONNECTIONS)
            time.sleep(SETTLE)
            tcp_after, slab_after = kernel_memory()
            rss_after = rss_bytes(c.pid) if c.pid else 0
            pipes = pipes_open(c.pid) if c.pid else 0
        finally:
            for sock in socks:
                abort(sock)
            holder.release()
        slab = (slab_after - slab_before) / IDLE_CONNECTIONS
        figures = {"kernel_slab_b_per_conn": slab}
        figures["tcp_buffers_b_per_conn"] = (tcp_after - tcp_before) / IDLE_CONNECTIONS
        if name == DIRECT:
            direct_slab[:] = [slab]
        else:
            rss = (rss_after - rss_before) / IDLE_CONNECTIONS
            figures.update({"proxy_rss_b_per_conn": rss, "pipes": pipes})
            if direct_slab:  # the proxy's own two sockets and its bookkeeping
                figures["total_b_per_conn"] = rss + slab - direct_slab[0]
        raw = {"rss": [rss_before, rss_after], "slab": [slab_before, slab_after]}
        return figures, str(raw | {"tcp": [tcp_before, tcp_after], "pipes": pipes})

    run_series(request, "idle-memory", names, measure, info={"connections": IDLE_CONNECTIONS})
