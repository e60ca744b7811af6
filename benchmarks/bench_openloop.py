"""The open-loop generator (benchmarks/openloop.c, built by install-bench-deps.sh into
build/openloop): requests at a fixed rate, latency from each one's intended send time."""

from __future__ import annotations

import json
import subprocess

from bench_config import HERE
from bench_procs import CLIENT_CPU, HOST

OPENLOOP = HERE.parent / "build" / "openloop"


def run_openloop(
    port: int, *, rate: float, seconds: float, connections: int
) -> tuple[dict[str, float], str]:
    if not OPENLOOP.exists():
        raise FileNotFoundError(f"{OPENLOOP} missing: run scripts/install-bench-deps.sh")
    argv = ["taskset", "-c", str(CLIENT_CPU), str(OPENLOOP), HOST, str(port)]
    argv += [str(connections), f"{rate:.0f}", f"{seconds:g}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise RuntimeError(f"openloop ({out.returncode}): {out.stderr}")
    figures = json.loads(out.stdout)
    if not figures["answered"]:
        raise RuntimeError(f"openloop: no answer came back: {out.stdout}")
    return {k: float(v) for k, v in figures.items()}, out.stdout
