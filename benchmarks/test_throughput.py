"""Bulk throughput through each contender, one stream and several, next to a direct
connection in the same run; the proxy's CPU per GB moved. Each test is one transfer
(one repetition); the contenders take turns within each round. The figures go to the
table at the end of the run and to pytest-benchmark's extra_info; nothing here asserts
a timing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench_contenders import CONTENDERS, REPS, SECONDS, Contenders
from bench_iperf import Transfer, transfer
from bench_report import Results


# The decorator nearest the function is the outer loop: for each stream count, REPS
# rounds, each round one transfer per contender.
@pytest.mark.parametrize("name", CONTENDERS)
@pytest.mark.parametrize("rep", range(REPS), ids=lambda i: f"rep{i}")
@pytest.mark.parametrize("streams", [1, 4], ids=lambda n: f"{n}stream")
def test_bulk_throughput(
    benchmark,
    contenders: Contenders,
    results: Results,
    name: str,
    streams: int,
    rep: int,
    tmp_path: Path,
) -> None:
    contender = contenders.get(name)

    def one_transfer() -> Transfer:
        return transfer(
            contender.port,
            contender.backend_port,
            streams=streams,
            seconds=SECONDS,
            proxy_pid=contender.pid,
            workdir=tmp_path,
        )

    # One round: pytest-benchmark's own timing is the wall time of the transfer; the
    # figures that matter are in extra_info, and aggregated in the final table.
    benchmark.group = f"{name}, {streams} stream(s)"
    done = benchmark.pedantic(one_transfer, rounds=1, iterations=1)
    assert done.bytes > 0, "no bytes reached the server"
    row = results.row(name, streams)
    row.transfers.append(done)
    benchmark.extra_info.update(
        {
            "contender": name,
            "streams": streams,
            "repetition": rep,
            "bytes": done.bytes,
            "gbit_per_s": round(done.gbit_per_s, 3),
            "proxy_cpu_ms_per_gb": _round(done.cpu_ms_per_gb),
            # The figure over the repetitions so far, complete in the last one.
            "so_far": results.summary(row),
        }
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
