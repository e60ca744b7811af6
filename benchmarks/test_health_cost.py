"""What active health checks cost the relay (issue 4): bulk throughput through
fastproxy while it checks many targets at a high rate, next to the same proxy
with checks idle."""

from __future__ import annotations

import json
import re
import socket
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

from bench_config import BULK_BYTES
from bench_iperf import transfer
from bench_procs import HOST, SERVER_CPU, Pinned, free_ports
from bench_series import run_series

TARGETS = 500  # checked targets: 100 apps of 5
INTERVAL = 0.1  # seconds: 5,000 checks per second in all


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


def _start(tmp: Path, interval: float) -> tuple[Pinned, int, int, list[AcceptAndClose]]:
    """fastproxy checking TARGETS targets every `interval` s; (proxy, its bulk port, the
    iperf3 port behind it, the checked targets)."""
    bulk_port, iperf_port, target_port, *app_ports = free_ports(3 + TARGETS // 5)
    targets = [AcceptAndClose(host, target_port) for host in TARGET_HOSTS]
    config = _config(bulk_port, iperf_port, target_port, app_ports, interval)
    path = tmp / f"health-{interval}.json"
    path.write_text(json.dumps(config))
    proxy = Pinned(
        [sys.executable, "-m", "fastproxy", "serve", str(path)]
        + ["--control-socket", str(tmp / f"control-{interval}.sock")],
        SERVER_CPU,
        tmp / f"health-{interval}.log",
    )
    proxy.wait_until(lambda: "serving" in proxy.log(), "start")
    return proxy, bulk_port, iperf_port, targets


def test_health_check_cost(request, tmp_path: Path) -> None:
    """fastproxy with checks idle, and with checks running, taking turns: bulk
    throughput (1 stream) and CPU per GB, and the check rate reached."""
    running = {
        "checks-idle": _start(tmp_path, 86400.0),
        "checks-running": _start(tmp_path, INTERVAL),
    }

    def measure(name: str) -> tuple[dict[str, float], str]:
        proxy, bulk_port, iperf_port, _ = running[name]
        admin = re.search(r"admin=([0-9.]+:[0-9]+)", proxy.log()).group(1)  # type: ignore[union-attr]
        checks, started = _checks_done(admin), time.monotonic()
        figures, raw = transfer(
            bulk_port, iperf_port, streams=1, size=BULK_BYTES, proxy_pid=proxy.pid, workdir=tmp_path
        )
        figures["checks_per_s"] = (_checks_done(admin) - checks) / (time.monotonic() - started)
        return figures, raw

    try:
        info = {"load": "iperf3", "bytes": BULK_BYTES}
        figures = run_series(request, "health-check-cost", list(running), measure, info=info)
    finally:
        for proxy, _, _, targets in running.values():
            proxy.stop()
            for target in targets:
                target.close()
    assert statistics.median(figures["checks-running"]["checks_per_s"]) > 0
