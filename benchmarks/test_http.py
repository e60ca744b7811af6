"""HTTP load through each contender to nginx, with wrk: new connections per second
(one request per connection), the keep-alive request rate with its latency under load,
and the latency of one request at a time. Each test is one run of wrk (one
repetition); the contenders take turns within each round. Nothing here asserts a
timing."""

from __future__ import annotations

import pytest

from bench_contenders import CONTENDERS, REPS, SECONDS, Contenders
from bench_figures import CONNECT_CONCURRENCY, KEEPALIVE_CONCURRENCY
from bench_report import Figure
from bench_wrk import Load, run_wrk

# kind -> (wrk connections, one request per connection)
KINDS = {
    "connect": (CONNECT_CONCURRENCY, True),
    "keepalive": (KEEPALIVE_CONCURRENCY, False),
    "latency": (1, False),
}


@pytest.mark.parametrize("name", CONTENDERS)
@pytest.mark.parametrize("rep", range(REPS), ids=lambda i: f"rep{i}")
@pytest.mark.parametrize("kind", KINDS)
def test_http_load(
    benchmark,
    contenders: Contenders,
    figures: dict[str, Figure],
    nginx: None,
    name: str,
    rep: int,
    kind: str,
) -> None:
    contender = contenders.get(name)
    connections, close = KINDS[kind]

    def one_run() -> Load:
        return run_wrk(
            contender.http_port,
            connections=connections,
            seconds=SECONDS,
            close=close,
            proxy_pid=contender.pid,
        )

    benchmark.group = f"{name}, http {kind}"
    load = benchmark.pedantic(one_run, rounds=1, iterations=1)
    assert load.requests > 0, "no answer came back"
    figure = figures[kind]
    cpu = load.cpu_us_per_request
    if kind == "connect":
        figure.column("conn/s").add(name, load.rate)
        figure.column("errors").add(name, load.errors)
        if cpu is not None:
            figure.column("proxy CPU µs/conn").add(name, cpu)
    elif kind == "keepalive":
        figure.column("req/s").add(name, load.rate)
        figure.column("p50 µs").add(name, load.p50 * 1e6)
        figure.column("p99 µs").add(name, load.p99 * 1e6)
        if cpu is not None:
            figure.column("proxy CPU µs/req").add(name, cpu)
    else:
        figure.column("p50 µs").add(name, load.p50 * 1e6)
        figure.column("p99 µs").add(name, load.p99 * 1e6)
        figure.column("req/s").add(name, load.rate)
    benchmark.extra_info.update(
        {
            "contender": name,
            "kind": kind,
            "repetition": rep,
            "requests": load.requests,
            "rate": round(load.rate, 1),
            "p50_us": round(load.p50 * 1e6, 1),
            "p99_us": round(load.p99 * 1e6, 1),
            "errors": load.errors,
            "proxy_cpu_us_per_request": None if cpu is None else round(cpu, 2),
        }
    )
