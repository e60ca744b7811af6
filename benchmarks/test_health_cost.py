"""What active health checks cost the relay (issue 4): bulk throughput through
fastproxy while it checks many targets at a high rate, next to the same proxy
with checks idle. Written to results/health_cost.md."""

from __future__ import annotations

import json
import re
import socket
import statistics
import threading
import time
import urllib.request
from pathlib import Path

from bench_iperf import transfer
from bench_procs import HOST, SERVER_CPU, Pinned, free_ports

TARGETS = 500  # checked targets: 100 apps of 5
INTERVAL = 0.1  # seconds: 5,000 checks per second in all
ROUNDS = 3
SECONDS = 3.0


class AcceptAndClose:
    """A checked target: a listener that takes each check and closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_server((host, port), backlog=4096)
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self.sock.close()


# Five listeners on one port at 127.0.0.1..5 make five distinct targets per app.
TARGET_HOSTS = [f"127.0.0.{k}" for k in range(1, 6)]


def _config(
    bulk_port: int, iperf_port: int, target_port: int, app_ports: list[int], interval: float
) -> dict:
    apps = [
        {
            "Name": "bulk",
            "Ports": [bulk_port],
            "Targets": [f"{HOST}:{iperf_port}"],
            "HealthCheck": {"Interval": 86400},  # the iperf3 server takes one client
        }
    ]
    for i, port in enumerate(app_ports):
        apps.append(
            {
                "Name": f"checked-{i}",
                "Ports": [port],
                "Targets": [f"{host}:{target_port}" for host in TARGET_HOSTS],
                "HealthCheck": {"Interval": interval, "Timeout": 1},
            }
        )
    return {"Apps": apps, "Listen": HOST, "Steering": "ports", "Workers": 1, "Admin": f"{HOST}:0"}


def _checks_done(admin: str) -> float:
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r"^fastproxy_health_checks_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _run(tmp: Path, interval: float) -> tuple[list[float], list[float], float]:
    bulk_port, iperf_port, target_port, *app_ports = free_ports(3 + TARGETS // 5)
    targets = [AcceptAndClose(host, target_port) for host in TARGET_HOSTS]
    config = _config(bulk_port, iperf_port, target_port, app_ports, interval)
    path = tmp / f"health-{interval}.json"
    path.write_text(json.dumps(config))
    proxy = Pinned(
        [str(Path(".venv/bin/fastproxy").resolve()), "serve", str(path)]
        + ["--control-socket", str(tmp / f"control-{interval}.sock")],
        SERVER_CPU,
        tmp / f"health-{interval}.log",
    )
    try:
        proxy.wait_until(lambda: "serving" in proxy.log(), "start")
        admin = re.search(r"admin=([0-9.]+:[0-9]+)", proxy.log()).group(1)
        gbits, cpu = [], []
        checks_before, started = _checks_done(admin), time.monotonic()
        for _ in range(ROUNDS):
            result = transfer(
                bulk_port, iperf_port, streams=1, seconds=SECONDS, proxy_pid=proxy.pid, workdir=tmp
            )
            gbits.append(result.gbit_per_s)
            cpu.append(result.cpu_ms_per_gb or 0.0)
        rate = (_checks_done(admin) - checks_before) / (time.monotonic() - started)
        return gbits, cpu, rate
    finally:
        proxy.stop()
        for target in targets:
            target.close()


def test_health_check_cost(tmp_path: Path, benchmark) -> None:
    idle = _run(tmp_path, 86400.0)
    busy = _run(tmp_path, INTERVAL)
    lines = [
        "# Health-check cost",
        "",
        f"fastproxy, 1 relay worker, bulk iperf3 (1 stream, {SECONDS:g} s x {ROUNDS}) through one",
        f"app while {TARGETS} targets of 100 other apps are checked every {INTERVAL:g} s.",
        "",
        "| checks | checks/s | Gbit/s median [min-max] | proxy CPU ms/GB median |",
        "| --- | --- | --- | --- |",
    ]
    for name, (gbits, cpu, rate) in (("idle", idle), ("running", busy)):
        lines.append(
            f"| {name} | {rate:.0f} | {statistics.median(gbits):.2f} "
            f"[{min(gbits):.2f}-{max(gbits):.2f}] | {statistics.median(cpu):.0f} |"
        )
    ratio = statistics.median(busy[0]) / statistics.median(idle[0])
    lines += ["", f"Throughput with checks running: {ratio:.2f}x of idle."]
    out = Path(__file__).parent / "results" / "health_cost.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    benchmark.extra_info.update({"checks_per_s": busy[2], "throughput_ratio": ratio})
    benchmark.pedantic(lambda: None, rounds=1)
    assert busy[2] > 0
