"""The port-spread generator (benchmarks/portspread.c, built into build/portspread on
first use): new connections round robin over a range of ports, one `Connection: close`
request each, so that every port of a many-port proxy carries traffic."""

from __future__ import annotations

import json
import signal
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
    argv = _argv(first, count, connections, seconds)
    meter = CpuMeter(proxy_pid)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    proxy_cpu, shared_cpu = meter.stop()
    figures = _figures(out.returncode, out.stdout, out.stderr)
    answered = figures["answered"] + figures["answered_late"]
    cpu = {"proxy_cpu_us_per_req": proxy_cpu, "shared_cpu_us_per_req": shared_cpu}
    per_request, unmeasured = cpu_figures(cpu, answered, 1e6) if answered else ({}, {})
    notes = "".join(f"\nnot measured: {name}: {why}" for name, why in unmeasured.items())
    return {**figures, **per_request}, out.stdout + notes


class Background:
    """portspread running until stop() (SIGTERM: it starts no more connections, lets
    those open finish), at most `limit` seconds: a load around an event of unknown
    length (a reload)."""

    def __init__(self, first: int, count: int, *, connections: int, limit: float = 120) -> None:
        self.limit = limit
        self.proc = subprocess.Popen(
            _argv(first, count, connections, limit),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> tuple[dict[str, float], str]:
        try:
            self.proc.send_signal(signal.SIGTERM)
            out, err = self.proc.communicate(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return _figures(self.proc.returncode, out, err), out


def _argv(first: int, count: int, connections: int, seconds: float) -> list[str]:
    ensure_built()
    argv = ["taskset", "-c", str(CLIENT_CPU), str(BINARY), HOST, str(first), str(count)]
    return [*argv, str(connections), f"{seconds:g}"]


def _figures(returncode: int, stdout: str, stderr: str) -> dict[str, float]:
    if returncode != 0:
        raise RuntimeError(f"portspread ({returncode}): {stderr}")
    return {k: float(v) for k, v in json.loads(stdout).items()}
