"""What dashboards expect of /metrics (SPEC §13): connect-time histograms per target
(and so per app), health-check results per target, the process collector, build info;
and the Grafana dashboard in packaging/ queries only metrics that exist."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import pytest

from fastproxy import __version__, netns
from fastproxy.backends import NamedEchoServer
from metricsutil import metric
from proxyproc import ROOT, Proxy, app, free_ports

DASHBOARD = ROOT / "packaging" / "grafana-dashboard.json"


def busy_proxy(tmp_path: Path, **extra: str) -> tuple[Proxy, str, int]:
    backend = NamedEchoServer("b")
    (port,) = free_ports(1)
    checks = {"Interval": 0.1, "Timeout": 0.05}
    config = {"Apps": [app("a", [port], [backend.address], HealthCheck=checks)], **extra}
    proxy = Proxy(tmp_path, config)
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert sock.recv(100) == b"b\n"
    deadline = time.monotonic() + 10
    while metric(proxy, "fastproxy_health_check_ok", app="a", target=backend.address) != 1:
        assert time.monotonic() < deadline, proxy.http("GET", "/metrics")
        time.sleep(0.05)
    return proxy, backend.address, port


def test_connect_times_health_checks_process_and_build_info(tmp_path: Path) -> None:
    proxy, target, _ = busy_proxy(tmp_path)
    labels = {"app": "a", "target": target}
    assert metric(proxy, "fastproxy_connect_seconds_count", **labels) == 20
    assert metric(proxy, "fastproxy_connect_seconds_bucket", **labels, le="+Inf") == 20
    assert 0 < metric(proxy, "fastproxy_connect_seconds_sum", **labels) < 20 * 0.5
    # Cumulative buckets: loopback connects are fast, all 20 well under a second.
    assert metric(proxy, "fastproxy_connect_seconds_bucket", **labels, le="1") == 20
    passed = metric(proxy, "fastproxy_health_check_results_total", **labels, result="passed")
    assert passed >= 1
    assert metric(proxy, "fastproxy_health_check_results_total", **labels, result="failed") == 0
    assert metric(proxy, "process_open_fds") > 0
    assert metric(proxy, "process_resident_memory_bytes") > 1 << 20
    body = proxy.http("GET", "/metrics")[1].decode()
    info = next(line for line in body.splitlines() if line.startswith("fastproxy_build_info{"))
    assert f'version="{__version__}"' in info and 'relay="splice"' in info
    assert 'steering="ports"' in info and info.endswith(" 1.0")
    assert proxy.stop() == 0


def queried_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    names = set()
    for expr in exprs:
        names |= set(re.findall(r"\b((?:fastproxy|process)_[a-z_]+)\b", expr))
    return names


@pytest.mark.skipif(os.geteuid() != 0, reason="bpf steering (its metrics) needs root")
def test_every_metric_the_grafana_dashboard_queries_exists(tmp_path: Path) -> None:
    names = queried_metrics()
    assert len(names) >= 15, names
    with netns.temporary("fpmetrics"):
        proxy, _, _ = busy_proxy(tmp_path, Steering="bpf", Listen="::")
        body = proxy.http("GET", "/metrics")[1].decode()
        proxy.stop()
    exposed = {re.split(r"[{ ]", line)[0] for line in body.splitlines() if line[:1] != "#"}
    assert names <= exposed, sorted(names - exposed)
