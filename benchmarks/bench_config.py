"""How long and how often the benchmarks run, and where their results go.

BENCH_SMOKE=1            every benchmark once, tiny loads: does each produce a figure
BENCH_REPS=N             rounds per contender (default 5; smoke 1)
BENCH_SECONDS=S          per timed load run (default 5: long enough for a p99; smoke
                         0.3, but wrk runs whole seconds, at least 1). RESULTS.md says
                         what each case really ran, from the run's JSON.
BENCH_RESULTS_DIR=PATH   where raw outputs go (default benchmarks/results)
BENCH_ONLY=a,b           only these contenders (a targeted comparison, never a report)"""

from __future__ import annotations

import os
from pathlib import Path

SMOKE = os.environ.get("BENCH_SMOKE") == "1"
REPS = int(os.environ.get("BENCH_REPS", "1" if SMOKE else "5"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "0.3" if SMOKE else "5"))
# Bulk transfers move a fixed amount (iperf3 -n), so the library's timing of a round is
# the time the transfer took: 2 GB is ~1 s at the direct connection's speed here.
BULK_BYTES = "20M" if SMOKE else "2G"
HERE = Path(__file__).resolve().parent
ONLY = tuple(n for n in os.environ.get("BENCH_ONLY", "").split(",") if n)
RESULTS_DIR = Path(os.environ.get("BENCH_RESULTS_DIR", HERE / "results"))
RAW_DIR = RESULTS_DIR / "raw"
# Seconds of load before the counted window where the generator allows it (openloop's
# closed loop: the many-connection cases), so that it excludes the connect storm.
WARMUP = 0.2 if SMOKE else 1.0
# Issue 12's scaling figure: 8,000 active connections (test_http's concurrent case); the
# shared contenders' connection limits are derived from it (bench_contenders).
CONCURRENT = 200 if SMOKE else 8000
