"""Bulk throughput through each contender, one stream and four, next to the direct
connection in the same run, and the CPU per GB moved, two ways (bench_procs.CpuMeter).
Nothing here asserts a timing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench_config import BULK_BYTES
from bench_contenders import CONTENDERS, Contenders
from bench_iperf import transfer
from bench_series import run_series


@pytest.mark.parametrize("streams", [1, 4])
def test_bulk(request, contenders: Contenders, streams: int, tmp_path: Path) -> None:
    names = contenders.available(CONTENDERS, every=True)

    def measure(name: str) -> tuple[dict[str, float], str]:
        c = contenders.get(name)
        return transfer(
            c.port,
            c.backend_port,
            streams=streams,
            size=BULK_BYTES,
            proxy_pid=c.pid,
            workdir=tmp_path,
        )

    run_series(
        request,
        f"bulk-{streams}stream",
        names,
        measure,
        info={"load": "iperf3", "bytes": BULK_BYTES},
    )
