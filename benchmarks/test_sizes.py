"""The size sweep: keep-alive requests for answers of 64 B to 1 MiB through each relay
mode, to see where copying and splicing cross over (HAProxy with splice-auto, which
switches between the two itself, for reference)."""

from __future__ import annotations

import pytest

from bench_backends import SIZES
from bench_config import SECONDS, SMOKE
from bench_contenders import DIRECT, Contenders
from bench_series import run_series
from bench_wrk import run_wrk, wrk_seconds

NAMES = (DIRECT, "haproxy-splice-auto", "fastproxy-copy", "fastproxy-splice")
CONNECTIONS = 8


@pytest.mark.parametrize("size", (SIZES[0], SIZES[-1]) if SMOKE else SIZES)
def test_size_sweep(request, contenders: Contenders, nginx: None, size: int) -> None:
    names = contenders.available(NAMES)

    def measure(name: str) -> tuple[dict[str, float], str]:
        c = contenders.get(name)
        figures, out = run_wrk(
            c.http_port,
            connections=CONNECTIONS,
            seconds=SECONDS,
            path=f"/bytes/{size}",
            proxy_pid=c.pid,
        )
        figures["gbit_per_s"] = figures["rate"] * size * 8 / 1e9
        return figures, out

    run_series(
        request,
        f"size-{size}",
        names,
        measure,
        info={"bytes": size, "load": "wrk", "seconds": wrk_seconds(SECONDS)},
    )
