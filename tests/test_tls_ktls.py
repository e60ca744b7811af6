"""Kernel TLS (SPEC §14): where the kernel has it (/proc/net/tls_stat), OpenSSL installs
a terminated connection's keys on the socket and the relay splices; where it has not
(this project's CI machine), the relay keeps the copy path through OpenSSL. The same
test runs in both and checks the bytes and which path was taken."""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path

import pytest

from metricsutil import metric
from proxyproc import Proxy, free_ports
from servers import HashingEcho
from tlscerts import Pki
from tlsclient import client, exchange, tls_app, wait_for

KTLS = os.path.exists("/proc/net/tls_stat")


def tls_stat() -> dict[str, int]:
    if not KTLS:
        return {}
    with open("/proc/net/tls_stat") as f:
        return {k: int(v) for k, v in (line.split() for line in f if line.strip())}


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_bulk_takes_the_kernel_path_where_there_is_one_else_the_copy_path(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, version: str
) -> None:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    echo = HashingEcho()
    (port,) = free_ports(1)
    proxy = Proxy(
        tmp_path,
        {"Relay": "splice",
         "Apps": [tls_app("k", port, [echo.address], [pki.issue("f", ["f.test"])])]},
    )  # fmt: skip
    assert ("kernel TLS available" if KTLS else "no kernel TLS here") in proxy.log()
    before = tls_stat()
    data = os.urandom(16 << 20)
    maximum = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    with client(pki, port, "f.test", maximum=maximum) as sock:
        digest, received = exchange(sock, data)
    assert (received, digest) == (len(data), hashlib.sha256(data).hexdigest())
    empty = hashlib.sha256().hexdigest()
    wait_for(lambda: set(echo.digests) - {empty})
    assert set(echo.digests) - {empty} == {hashlib.sha256(data).hexdigest()}
    if KTLS:  # untested where written: that kernel had no kTLS
        assert metric(proxy, "fastproxy_tls_ktls_total", app="k") == 1
        after = tls_stat()
        assert after.get("TlsTxSw", 0) + after.get("TlsTxDevice", 0) > before.get(
            "TlsTxSw", 0
        ) + before.get("TlsTxDevice", 0)
    else:
        assert metric(proxy, "fastproxy_tls_ktls_total", app="k") == 0
