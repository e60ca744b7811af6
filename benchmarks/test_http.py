"""Small HTTP requests through each contender to nginx: with wrk (one thread, on the
client's CPU), new connections per second where the proxy closes first (churn), the
keep-alive rate with its latency, one request at a time; with openloop's closed loop,
100 and 8,000 concurrent active connections, all of them open before the clock starts
and a warm-up left out of the counted window (wrk counts from its first connect: the
connect storm of 8,000 was in its window). Each round says how busy its load generator
was (client_cpu_share). Nothing here asserts a timing."""

from __future__ import annotations

import subprocess

import pytest

from bench_config import CONCURRENT, SECONDS, SMOKE, WARMUP
from bench_contenders import CONTENDERS, Contenders
from bench_openloop import run_closed
from bench_series import run_series
from bench_wrk import run_wrk, wrk_seconds

# Issue 12's scaling figure: CONCURRENT (8,000) active connections against 100
# (bench_procs raises the open-file limit; the proxy holds two descriptors per connection).
FEW = 20 if SMOKE else 100
# case -> (wrk connections, one request per connection)
CASES = {
    "churn": (32, True),
    "keepalive": (32, False),
    "latency": (1, False),
    "concurrent-100": (FEW, False),
    "concurrent": (CONCURRENT, False),
}


def time_wait(port: int) -> int:
    """Sockets in TIME_WAIT whose local port is `port` (a proxy's front port)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "time-wait", f"sport = :{port}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return len(out.stdout.splitlines())


@pytest.mark.parametrize("case", CASES)
def test_http(request, contenders: Contenders, nginx: None, case: str) -> None:
    names = contenders.available(CONTENDERS)
    connections, close = CASES[case]

    def measure(name: str) -> tuple[dict[str, float], str]:
        c = contenders.get(name)
        if case.startswith("concurrent"):
            return run_closed(
                c.http_port,
                seconds=SECONDS,
                warmup=WARMUP,
                connections=connections,
                proxy_pid=c.pid,
            )
        figures, out = run_wrk(
            c.http_port, connections=connections, seconds=SECONDS, close=close, proxy_pid=c.pid
        )
        if close:
            # nginx closes first, so the proxy's client side closes first: TIME_WAIT
            # piles up on the proxy's front port (on nginx's for the direct connection).
            figures["time_wait"] = time_wait(c.http_port)
        return figures, out

    if case.startswith("concurrent"):
        info = {"connections": connections, "load": "openloop closed loop"}
        info |= {"seconds": SECONDS, "warmup_seconds": WARMUP}
    else:
        info = {"connections": connections, "load": "wrk", "seconds": wrk_seconds(SECONDS)}
    # The latency a proxy adds over direct (issue 25's headline): at one connection, where
    # no queue hides it.
    added = ("p50_us", "p99_us") if case == "latency" else ()
    run_series(request, f"http-{case}", names, measure, info=info, over_direct=added)
