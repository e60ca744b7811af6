"""`fastproxy serve` imports what serving needs, when it needs it (issue 20: start-up with
10,000 ports is counted in milliseconds, and most of it was imports). No time is asserted
(times depend on the machine); the modules a start loads are, from the interpreter's own
account (python -X importtime), in both steering modes."""

from __future__ import annotations

import re
from pathlib import Path

from proxyproc import Proxy, free_ports

# What a serve of a file config (no Tls, no etcd, no admin request yet) must not load,
# and where each belongs instead. Only what is needed before the privilege drop, or from
# the install's own packages, may wait: a stdlib module imported as the proxy's user can
# be out of its reach (an interpreter under /root), so urllib.parse and hmac (admin
# POSTs) and concurrent.futures (hostnames a reload brings) are imported at start.
NOT_AT_START = {
    "fastproxy.cluster.cli": "the etcd commands (config push/get, cluster status)",
    "fastproxy.cluster.etcd": "the etcd client: an etcd:// config",
    "fastproxy.cluster.source": "the etcd config source: an etcd:// config",
    "etcd3gw": "the etcd client library: an etcd:// config",
    "requests": "the etcd client library's HTTP: an etcd:// config",
    "ssl": "an app with Tls",
    "h11": "the admin endpoint's first connection",
    "prometheus_client": "the first /metrics scrape",
    "tempfile": "compiling the BPF program with bcc (with shutil, bz2, lzma)",
    "subprocess": "compiling the BPF program with bcc",
    "http.client": "the CLI's commands that talk to a running proxy",
}

IMPORT_LINE = re.compile(rb"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", re.MULTILINE)


def _imported_until_serving(log: bytes) -> set[str]:
    """The modules -X importtime reported before the "serving" line."""
    head = log[: log.index(b"serving")]
    return {name.decode() for name in IMPORT_LINE.findall(head)}


def _start(tmp_path: Path, steering: dict[str, str], port: int) -> tuple[Proxy, bytes]:
    config = {
        "Apps": [{"Name": "a", "Ports": [port], "Targets": ["127.0.0.1:9"]}],
        "Workers": 1,
        **steering,
    }
    proxy = Proxy(tmp_path, config, "--no-watch", env={"PYTHONPROFILEIMPORTTIME": "1"})
    return proxy, proxy.log_path.read_bytes()


def test_serve_imports_only_what_serving_needs(tmp_path: Path, steering: dict[str, str]) -> None:
    (port,) = free_ports(1)
    proxy, log = _start(tmp_path, steering, port)
    if b"compiled by bcc" in log:
        # This session's BPF cache was cold: bcc's imports were needed. The next start
        # loads the cached program, as every start of an install does.
        assert proxy.stop() == 0
        proxy, log = _start(tmp_path, steering, port)
    try:
        assert b"compiled by bcc" not in log
        imported = _imported_until_serving(log)
        assert "fastproxy.server" in imported, "no -X importtime account in the log"
        wrong = sorted(set(NOT_AT_START) & imported)
        assert not wrong, "loaded at start: " + "; ".join(
            f"{name} (belongs to {NOT_AT_START[name]})" for name in wrong
        )
    finally:
        assert proxy.stop() == 0
