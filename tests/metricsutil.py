"""Read one sample from a running proxy's /metrics."""

from __future__ import annotations

import re

from proxyproc import Proxy


def metric(proxy: Proxy, name: str, **labels: str) -> float:
    """The value of `name{labels}` (labels matched exactly, in any order); 0 if absent."""
    code, body = proxy.http("GET", "/metrics")
    assert code == 200
    for line in body.decode().splitlines():
        found = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if not found or found.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2) or ""))
        if have == labels:
            return float(found.group(3))
    return 0.0
