"""Profile one contender under one of the benchmark loads: syscalls per connection, per
request or per GB (perf stat on the syscall tracepoints), and where the CPU goes (perf
record). Not part of the suite; for whoever optimises the hot path. As root, ideally in
a network namespace of its own:

    unshare --net sh -c 'ip link set lo up && .venv/bin/python benchmarks/profile_relay.py \\
        fastproxy-splice connect'

LOAD is one of: bulk1, bulk4 (iperf3, 1 or 4 streams), connect (wrk, a connection per
request), keepalive (wrk, 32 keep-alive connections), latency (wrk, 1 connection),
concurrent (wrk, 8,000 keep-alive connections), concurrent-100 (wrk, 100 of them).
Output in /tmp/profile-CONTENDER-LOAD/: syscalls.txt, perf.txt (the top of perf report)."""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_backends import start_nginx
from bench_contenders import start_proxy
from bench_iperf import transfer
from bench_peers import Route
from bench_procs import free_ports
from bench_wrk import run_wrk

LOADS = ("bulk1", "bulk4", "connect", "keepalive", "latency", "concurrent", "concurrent-100")
LOAD_CONNECTIONS = {"connect": 32, "keepalive": 32, "concurrent": 8000, "concurrent-100": 100}
CONNECTIONS = max(LOAD_CONNECTIONS.values())  # the peers' limits are set above it


def run_load(load: str, fronts: dict[str, int], pid: int, seconds: float, workdir: Path) -> float:
    """Run the load; returns its unit count: GB for bulk, requests otherwise."""
    if load.startswith("bulk"):
        gigabytes = max(1, round(seconds * 2))  # ~16 Gbit/s
        done, _ = transfer(
            fronts["iperf"],
            fronts["iperf_backend"],
            streams=int(load[-1]),
            size=f"{gigabytes}G",
            proxy_pid=pid,
            workdir=workdir,
        )
        cpu = done.get("proxy_cpu_ms_per_gb", math.nan)  # left out below one clock tick
        print(f"{done['gbit_per_s']:.2f} Gbit/s, {cpu:.0f} ms CPU/GB")
        return float(gigabytes)
    result, _ = run_wrk(
        fronts["http"],
        connections=LOAD_CONNECTIONS.get(load, 1),
        seconds=seconds,
        close=load == "connect",
        proxy_pid=pid,
    )
    print(
        f"{result['rate']:.0f} req/s, p50 {result['p50_us']:.0f} µs, p99 {result['p99_us']:.0f}"
        f" µs, {result.get('proxy_cpu_us_per_req', math.nan):.1f} µs CPU/req,"
        f" {result['errors']:.0f} errors"
    )
    return result["requests"]


def attach(argv: list[str], out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=out.open("w"))
    time.sleep(0.5)  # perf attached
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(2)  # SIGINT: perf writes its summary
    proc.wait(30)


def syscalls_per_unit(perf_stat: str, units: float, unit: str) -> str:
    rows = []
    for line in perf_stat.splitlines():
        found = re.match(r"\s*([\d,]+)\s+syscalls:sys_enter_(\w+)", line)
        if found:
            count = int(found.group(1).replace(",", ""))
            if count:
                rows.append((count, found.group(2)))
    rows.sort(reverse=True)
    total = sum(count for count, _ in rows)
    lines = [f"{'syscall':<20} {'count':>12} {'per ' + unit:>14}"]
    lines += [f"{name:<20} {count:>12,} {count / units:>14.2f}" for count, name in rows]
    lines.append(f"{'total':<20} {total:>12,} {total / units:>14.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("contender")
    parser.add_argument("load", choices=LOADS)
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    out = Path(f"/tmp/profile-{args.contender}-{args.load}")
    out.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="profile-"))
    iperf_front, iperf_back, http_front, http_port = free_ports(4)
    nginx = start_nginx(http_port, work / "nginx")
    routes: list[Route] = [(iperf_front, [iperf_back]), (http_front, [http_port])]
    proxy = start_proxy(args.contender, routes, work, connections=CONNECTIONS)
    fronts = {"iperf": iperf_front, "iperf_backend": iperf_back, "http": http_front}
    unit = "GB" if args.load.startswith("bulk") else "request"
    try:
        run_load(args.load, fronts, proxy.pid, 1, work)  # warm up
        pid = str(proxy.pid)
        perf = attach(["perf", "stat", "-e", "syscalls:sys_enter_*", "-p", pid], out / "stat.txt")
        units = run_load(args.load, fronts, proxy.pid, args.seconds, work)
        stop(perf)
        table = syscalls_per_unit((out / "stat.txt").read_text(), units, unit)
        (out / "syscalls.txt").write_text(table + "\n")
        print(table)
        data = str(out / "perf.data")
        record = ["perf", "record", "-g", "-F", "2000", "-o", data, "-p", pid]
        perf = attach(record, out / "record.txt")
        run_load(args.load, fronts, proxy.pid, args.seconds, work)
        stop(perf)
        report = subprocess.run(
            ["perf", "report", "-i", data, "--stdio", "--no-children", "--percent-limit", "1"]
            + ["--sort", "dso,symbol", "-g", "none"],
            capture_output=True,
            text=True,
        ).stdout
        (out / "perf.txt").write_text(report)
        print("\n".join(line for line in report.splitlines() if "%" in line)[:3000])
    finally:
        proxy.stop()
        nginx.stop()
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
