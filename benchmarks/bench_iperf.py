"""One bulk transfer with iperf3: a fresh `iperf3 -s -1` on the backend port, the client
sending a fixed amount (-n) to a proxy's port (or straight to the server), the CPU read
around it both ways (bench_procs.CpuMeter)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench_procs import CLIENT_CPU, HOST, SERVER_CPU, CpuMeter, Pinned


def transfer(
    port: int, backend_port: int, *, streams: int, size: str, proxy_pid: int | None, workdir: Path
) -> tuple[dict[str, float], str]:
    """Send `size` bytes (iperf3 -n: "4G") over `streams` parallel connections to
    HOST:port, the backend itself or a proxy in front of it. Returns the figures
    (Gbit/s, CPU ms per GB the proxy's and the shared CPU's) and iperf3's summary."""
    server = Pinned(
        ["iperf3", "-s", "-1", "-B", HOST, "-p", str(backend_port)],
        SERVER_CPU,
        workdir / "iperf3-server.log",
    )
    try:
        server.wait_listening(backend_port)
        meter = CpuMeter(proxy_pid)
        client = subprocess.run(
            ["taskset", "-c", str(CLIENT_CPU), "iperf3", "-c", HOST, "-p", str(port)]
            + ["-n", size, "-P", str(streams), "-J"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        proxy_cpu, shared_cpu = meter.stop()
        server.proc.wait(10)  # -1: the server leaves after its one test
    finally:
        server.stop()
    try:
        report = json.loads(client.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"iperf3 client ({client.returncode}): {client.stderr}") from None
    if client.returncode != 0 or "error" in report:
        raise RuntimeError(f"iperf3 client: {report.get('error', client.stderr)}")
    received = report["end"]["sum_received"]
    gb = int(received["bytes"]) / 1e9
    figures = {"gbit_per_s": gb * 8 / float(received["seconds"])}
    if proxy_cpu is not None:
        figures["proxy_cpu_ms_per_gb"] = proxy_cpu * 1e3 / gb
    figures["shared_cpu_ms_per_gb"] = shared_cpu * 1e3 / gb
    figures["all_cpu_ms_per_gb"] = meter.all_seconds * 1e3 / gb
    # The per-second intervals are long and add nothing to the totals: keep the end.
    return figures, json.dumps({"end": report["end"]})
