"""Latency at fixed offered rates, open loop (benchmarks/openloop.c): 25, 50, 75 and 90%
of the rate the direct connection reaches closed loop (wrk, same connections, measured
first in this test). p50/p99/p99.9 from each request's intended send time. The
Python proxies' asyncio twin and the bpf variant of the splice relay are left out to
keep the run short (uvloop and fastproxy-splice stand for them)."""

from __future__ import annotations

import pytest

from bench_config import SECONDS
from bench_contenders import DIRECT, Contenders
from bench_openloop import run_openloop
from bench_series import run_series
from bench_wrk import run_wrk

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
_direct_rate: list[float] = []


def direct_rate(contenders: Contenders) -> float:
    """The direct connection's closed-loop keep-alive rate, measured once."""
    if not _direct_rate:
        c = contenders.get(DIRECT)
        figures, _ = run_wrk(c.http_port, connections=CONNECTIONS, seconds=SECONDS, proxy_pid=None)
        _direct_rate.append(figures["rate"])
    return _direct_rate[0]


@pytest.mark.parametrize("share", SHARES, ids=lambda s: f"{s:.0%}")
def test_open_loop(request, contenders: Contenders, nginx: None, share: float) -> None:
    names = contenders.available(NAMES)
    rate = share * direct_rate(contenders)

    def measure(name: str) -> tuple[dict[str, float], str]:
        c = contenders.get(name)
        return run_openloop(c.http_port, rate=rate, seconds=SECONDS, connections=CONNECTIONS)

    info = {"offered_rate": round(rate), "share_of_direct": share, "connections": CONNECTIONS}
    info |= {"load": "openloop", "seconds": SECONDS}
    run_series(request, f"openloop-{share:.0%}", names, measure, info=info)
