"""Latency at fixed offered rates, open loop (benchmarks/openloop.c): 25, 50, 75 and 90%
of each contender's OWN closed-loop maximum, measured in this run, on its first round
here, with the same generator and connections (openloop's closed loop, after its
warm-up): so that "50 %" is half of what that contender can carry, a load fraction for
each, rather than a share of the direct connection's rate that can exceed a proxy's
maximum. p50/p99/p99.9 from each request's intended send time. The Python proxies'
asyncio twin and the bpf variant of the splice relay are left out to keep the run short
(uvloop and fastproxy-splice stand for them)."""

from __future__ import annotations

import pytest

from bench_config import SECONDS, WARMUP
from bench_contenders import DIRECT, Contenders
from bench_openloop import run_closed, run_openloop
from bench_series import run_series

CONNECTIONS = 32
SHARES = (0.25, 0.5, 0.75, 0.9)
NAMES = (
    DIRECT,
    "haproxy-splice-auto",
    "haproxy-nosplice",
    "nginx-stream",
    "uvloop",
    "fastproxy-copy",
    "fastproxy-splice",
)
_closed_max: dict[str, float] = {}  # contender -> its closed-loop rate, this run


def closed_loop_max(name: str, port: int) -> tuple[float, str]:
    """`name`'s closed-loop keep-alive rate through `port`, measured on first use (the
    raw output of that measurement, "" afterwards). A rate of 0 is no maximum to take a
    share of: an error that says so (a failed figure), never a rate of 0 offered."""
    if name in _closed_max:
        return _closed_max[name], ""
    figures, out = run_closed(
        port, seconds=SECONDS, warmup=WARMUP, connections=CONNECTIONS, proxy_pid=None
    )
    if not figures["rate"] > 0:
        raise RuntimeError(f"{name}: a closed-loop rate of {figures['rate']:g} req/s: no maximum")
    _closed_max[name] = figures["rate"]
    return figures["rate"], f"closed-loop maximum: {out}"


@pytest.mark.parametrize("share", SHARES, ids=lambda s: f"{s:.0%}")
def test_open_loop(request, contenders: Contenders, nginx: None, share: float) -> None:
    names = contenders.available(NAMES)

    def measure(name: str) -> tuple[dict[str, float], str]:
        c = contenders.get(name)
        top, measured = closed_loop_max(name, c.http_port)
        rate = share * top
        figures, out = run_openloop(
            c.http_port, rate=rate, seconds=SECONDS, connections=CONNECTIONS
        )
        return {**figures, "offered_rate": rate, "closed_loop_rate": top}, measured + out

    info = {"share_of_own_max": share, "connections": CONNECTIONS}
    info |= {"load": "openloop", "seconds": SECONDS}
    run_series(
        request,
        f"openloop-{share:.0%}",
        names,
        measure,
        info=info,
        over_direct=("p50_us", "p99_us"),
    )
