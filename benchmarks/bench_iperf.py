"""One bulk transfer with iperf3: a fresh `iperf3 -s -1` on the backend port, the client
sending a fixed amount (-n) to a proxy's port (or straight to the server), the CPU read
around it both ways (bench_procs.CpuMeter)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench_procs import CLIENT_CPU, HOST, SERVER_CPU, CpuMeter, Pinned, cpu_figures


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
    cpu = {
        "proxy_cpu_ms_per_gb": proxy_cpu,
        "shared_cpu_ms_per_gb": shared_cpu,
        "all_cpu_ms_per_gb": meter.all_seconds,
    }
    figures, unmeasured = bulk_figures(report["end"], cpu)
    # The per-second intervals are long and add nothing to the totals: keep the end.
    raw = {"end": report["end"], **({"not_measured": unmeasured} if unmeasured else {})}
    return figures, json.dumps(raw)


def bulk_figures(
    end: dict, cpu: dict[str, float | None]
) -> tuple[dict[str, float], dict[str, str]]:
    """Gbit/s and CPU ms per GB from an iperf3 client's "end" section, and the CPU
    seconds read around it (figure name -> seconds, see bench_procs.cpu_figures). The
    bytes are those the server counted: with -n the client ends the test once it has
    written them all into its socket, and the server stops counting when that end
    reaches it over the control connection; bytes still in the path's buffers then
    (through a proxy, up to tens of MB per stream) are not counted. A round in which
    it counted none has no figure: an error that says so."""
    sent = int(end["sum_sent"]["bytes"])
    received = int(end["sum_received"]["bytes"])
    seconds = float(end["sum_received"]["seconds"])
    if not sent:
        raise RuntimeError("iperf3: the client sent no byte: no traffic carried, no figure")
    if not received:
        raise RuntimeError(
            f"iperf3: the server counted none of the {sent:,} bytes sent: none reached it"
            " before the client's end of the test did (the proxy did not carry the stream,"
            " or all of it was still in the path's buffers, the server not having run"
            " meanwhile): no figure from this round"
        )
    if seconds <= 0:
        raise RuntimeError(f"iperf3: {received:,} bytes received in {seconds:g} s: no rate")
    gb = received / 1e9
    figures, unmeasured = cpu_figures(cpu, gb, 1e3)
    return {"gbit_per_s": gb * 8 / seconds, **figures}, unmeasured
