"""The open-loop generator (benchmarks/openloop.c, built by install-bench-deps.sh into
build/openloop): requests at a fixed rate, latency from each one's intended send time;
and its closed loop (rate 0), for the many-connection cases: every connection open
before the clock starts, a warm-up left out of the counted window."""

from __future__ import annotations

import json
import subprocess

from bench_config import HERE
from bench_procs import CLIENT_CPU, HOST, CpuMeter, cpu_figures

OPENLOOP = HERE.parent / "build" / "openloop"


def run_openloop(
    port: int, *, rate: float, seconds: float, connections: int
) -> tuple[dict[str, float], str]:
    if rate <= 0:  # a rate of 0 would be the closed loop: never by accident
        raise RuntimeError(f"openloop: no rate to offer ({rate:g} req/s)")
    return _run(port, connections, f"{rate:.0f}", seconds)


def run_closed(
    port: int, *, seconds: float, warmup: float, connections: int, proxy_pid: int | None
) -> tuple[dict[str, float], str]:
    """Closed loop, one request in flight per connection: `warmup` seconds not counted,
    then `seconds` that are. The proxy's CPU per request is over the whole run (warm-up
    included: the connection set-up is part of what it costs) and every answer in it."""
    meter = CpuMeter(proxy_pid)
    figures, out = _run(port, connections, "0", seconds, warmup)
    proxy_cpu, shared_cpu = meter.stop()
    cpu = {"proxy_cpu_us_per_req": proxy_cpu, "shared_cpu_us_per_req": shared_cpu}
    per_request, unmeasured = cpu_figures(cpu, figures["answered_total"], 1e6)
    notes = "".join(f"\nnot measured: {name}: {why}" for name, why in unmeasured.items())
    return {**figures, **per_request}, out + notes


def _run(
    port: int, connections: int, rate: str, seconds: float, warmup: float = 0
) -> tuple[dict[str, float], str]:
    if not OPENLOOP.exists():
        raise FileNotFoundError(f"{OPENLOOP} missing: run scripts/install-bench-deps.sh")
    argv = ["taskset", "-c", str(CLIENT_CPU), str(OPENLOOP), HOST, str(port)]
    argv += [str(connections), rate, f"{seconds:g}", "/", f"{warmup:g}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=warmup + seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"openloop ({out.returncode}): {out.stderr}")
    figures = json.loads(out.stdout)
    if not figures["answered"]:
        raise RuntimeError(f"openloop: no answer came back: {out.stdout}")
    return {k: float(v) for k, v in figures.items()}, out.stdout
