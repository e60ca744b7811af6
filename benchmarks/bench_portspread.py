"""The port-spread generator (benchmarks/portspread.c, built into build/portspread on
first use): new connections round robin over a range of ports, one `Connection: close`
request each, so that every port of a many-port proxy carries traffic."""

from __future__ import annotations

import json
import subprocess

from bench_config import HERE
from bench_procs import CLIENT_CPU, HOST, CpuMeter, cpu_figures

SOURCE = HERE / "portspread.c"
BINARY = HERE.parent / "build" / "portspread"


def ensure_built() -> None:
    """Build it when missing or older than its source (a fresh work tree has no build/)."""
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return
    BINARY.parent.mkdir(exist_ok=True)
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(BINARY), str(SOURCE)], check=True)


def run_portspread(
    first: int, count: int, *, connections: int, seconds: float, proxy_pid: int | None
) -> tuple[dict[str, float], str]:
    """`connections` at once for `seconds`, each on the next of ports first..first+count-1:
    the rate, errors (by kind: refused, failed, short, bad_status, unfinished), latency,
    how many ports answered, the generator's own CPU share, the proxy's CPU per request."""
    ensure_built()
    argv = ["taskset", "-c", str(CLIENT_CPU), str(BINARY), HOST, str(first), str(count)]
    argv += [str(connections), f"{seconds:g}"]
    meter = CpuMeter(proxy_pid)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    proxy_cpu, shared_cpu = meter.stop()
    if out.returncode != 0:
        raise RuntimeError(f"portspread ({out.returncode}): {out.stderr}")
    figures = {k: float(v) for k, v in json.loads(out.stdout).items()}
    answered = figures["answered"] + figures["answered_late"]
    cpu = {"proxy_cpu_us_per_req": proxy_cpu, "shared_cpu_us_per_req": shared_cpu}
    per_request, unmeasured = cpu_figures(cpu, answered, 1e6) if answered else ({}, {})
    notes = "".join(f"\nnot measured: {name}: {why}" for name, why in unmeasured.items())
    return {**figures, **per_request}, out.stdout + notes
