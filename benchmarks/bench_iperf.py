"""One bulk transfer with iperf3: a fresh `iperf3 -s -1` on the backend port, the client
sending to a proxy's port (or straight to the server), the proxy's CPU read around it."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench_procs import CLIENT_CPU, HOST, SERVER_CPU, Pinned, cpu_seconds


@dataclass(frozen=True)
class Transfer:
    bytes: int  # received by the server
    seconds: float  # as the server measured it
    proxy_cpu: float | None  # proxy utime + stime over the transfer, seconds

    @property
    def gbit_per_s(self) -> float:
        return self.bytes * 8 / self.seconds / 1e9

    @property
    def cpu_ms_per_gb(self) -> float | None:
        """Proxy CPU per 10^9 bytes moved, in milliseconds."""
        if self.proxy_cpu is None:
            return None
        return self.proxy_cpu * 1e3 / (self.bytes / 1e9)


def transfer(
    port: int,
    backend_port: int,
    *,
    streams: int,
    seconds: float,
    proxy_pid: int | None,
    workdir: Path,
) -> Transfer:
    """Send for `seconds` over `streams` parallel connections to HOST:port, which is the
    backend itself or a proxy in front of it."""
    server = Pinned(
        ["iperf3", "-s", "-1", "-B", HOST, "-p", str(backend_port)],
        SERVER_CPU,
        workdir / "iperf3-server.log",
    )
    try:
        server.wait_listening(backend_port)
        cpu_before = cpu_seconds(proxy_pid) if proxy_pid else 0.0
        client = subprocess.run(
            ["taskset", "-c", str(CLIENT_CPU), "iperf3", "-c", HOST, "-p", str(port)]
            + ["-t", str(seconds), "-P", str(streams), "-J"],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        )
        cpu_after = cpu_seconds(proxy_pid) if proxy_pid else 0.0
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
    return Transfer(
        bytes=int(received["bytes"]),
        seconds=float(received["seconds"]),
        proxy_cpu=cpu_after - cpu_before if proxy_pid else None,
    )
