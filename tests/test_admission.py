"""Admission control (SPEC §12, issue 19): Allow / Deny CIDR lists, refused in the
sk_lookup program with bpf steering (the proxy never accepts the client) and at
accept otherwise; MaxConnectionRate and MaxConnectionRatePerSource as token
buckets whose burst is the rate. Every refusal is counted per reason."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from pathlib import Path

import pytest

from fastproxy.backends import NamedEchoServer
from metricsutil import metric
from proxyproc import Proxy, app, free_ports


def through(port: int, source: str) -> bool:
    """Whether a client from `source` reaches the backend (which names itself)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5,
                                      source_address=(source, 0)) as sock:  # fmt: skip
            sock.settimeout(2.5)
            return sock.recv(100) == b"b\n"
    except (ConnectionRefusedError, ConnectionResetError, TimeoutError):
        return False


@pytest.mark.parametrize("steering", ["ports", "bpf"], indirect=True)
def test_allow_and_deny(tmp_path: Path, steering: dict[str, str]) -> None:
    backend = NamedEchoServer("b")
    denying, allowing = (18001, 18002) if steering["Steering"] == "bpf" else free_ports(2)
    quiet = {"HealthCheck": {"Interval": 3600}}  # no probe lands among the clients counted
    apps = [
        app("denying", [denying], [backend.address], Deny=["127.0.0.2/32", "192.0.2.0/24"],
            **quiet),
        app("allowing", [allowing], [backend.address], Allow=["127.0.0.3/32", "::1/128"],
            **quiet),
    ]  # fmt: skip
    proxy = Proxy(tmp_path, {"Apps": apps, **steering})
    assert proxy.steering == steering["Steering"]
    assert through(denying, "127.0.0.1")
    assert through(allowing, "127.0.0.3")
    accepted = backend.accepted
    for _ in range(3):
        assert not through(denying, "127.0.0.2")
        assert not through(allowing, "127.0.0.1")
    time.sleep(0.2)
    assert backend.accepted == accepted  # no target heard of a refused client
    assert metric(proxy, "fastproxy_rejected_total", app="denying", reason="deny") == 3
    assert metric(proxy, "fastproxy_rejected_total", app="allowing", reason="deny") == 3
    if steering["Steering"] == "bpf":
        # Dropped in the kernel: only the two clients let in were steered to the proxy's
        # socket (and so accepted); the six others never reached it.
        assert metric(proxy, "fastproxy_steering_steered_total") == 2
        assert metric(proxy, "fastproxy_steering_denied_total") == 6
    proxy.stop()
    backend.close()


def burst(port: int, count: int, source: str = "127.0.0.1") -> tuple[int, float]:
    """Open `count` clients as fast as possible: (how many got through, seconds)."""
    start = time.monotonic()
    socks = []
    for _ in range(count):
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=5,
                                              source_address=(source, 0)))  # fmt: skip
    passed = 0
    for sock in socks:
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            passed += sock.recv(100) == b"b\n"
        sock.close()
    # Up to the last answer: the proxy decides at accept, which may lag the connects.
    return passed, time.monotonic() - start


def test_connection_rates(tmp_path: Path) -> None:
    backend = NamedEchoServer("b")
    rated, per_source = free_ports(2)
    apps = [
        app("rated", [rated], [backend.address], MaxConnectionRate=10),
        app("per-source", [per_source], [backend.address], MaxConnectionRatePerSource=5),
    ]
    proxy = Proxy(tmp_path, {"Apps": apps})
    passed, elapsed = burst(rated, 30)
    # A full bucket of 10, plus what refilled while the burst lasted.
    assert 10 <= passed <= 10 + int(elapsed * 10)
    assert metric(proxy, "fastproxy_rejected_total", app="rated", reason="rate") == 30 - passed
    passed, elapsed = burst(per_source, 15, "127.0.0.2")
    assert 5 <= passed <= 5 + int(elapsed * 5)
    other, _ = burst(per_source, 3, "127.0.0.3")  # another source has its own bucket
    assert other == 3
    assert (
        metric(proxy, "fastproxy_rejected_total", app="per-source", reason="per-source-rate")
        == 15 - passed
    )
    assert metric(proxy, "fastproxy_rejected_total", app="per-source", reason="rate") == 0
    proxy.stop()
    backend.close()


def test_rates_behind_trusted_senders(tmp_path: Path) -> None:
    """Behind a trusted balancer the app's bucket is charged once per client (at
    accept) and the per-source bucket by the client its header names."""
    backend = NamedEchoServer("b")
    (port,) = free_ports(1)
    settings = {"AcceptProxyProtocol": ["127.0.0.1/32"], "MaxConnectionRate": 6,
                "MaxConnectionRatePerSource": 2}  # fmt: skip
    proxy = Proxy(tmp_path, {"Apps": [app("behind-lb", [port], [backend.address], **settings)]})
    start = time.monotonic()
    socks = []
    for i in range(12):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        client = "198.51.100.1" if i < 6 else f"198.51.100.{i}"
        sock.sendall(f"PROXY TCP4 {client} 10.0.0.1 5000 443\r\n".encode())
        socks.append(sock)
    elapsed = time.monotonic() - start
    passed = 0
    for sock in socks:
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            passed += sock.recv(100) == b"b\n"
        sock.close()
    assert elapsed < 1.0, "too slow a machine for this test's counts"
    # The first six pass the app's bucket (burst 6) at accept; their one client's own
    # bucket (burst 2) lets two of them through; the last six find the app's empty.
    # (Charging the app's bucket again for the header left none through.)
    rate = metric(proxy, "fastproxy_rejected_total", app="behind-lb", reason="rate")
    per_source = metric(proxy, "fastproxy_rejected_total", app="behind-lb",
                        reason="per-source-rate")  # fmt: skip
    assert rate + per_source + passed == 12
    assert passed >= 2 and per_source >= 2
    proxy.stop()
    backend.close()


@pytest.mark.parametrize("steering", ["bpf"], indirect=True)
def test_a_failed_reload_puts_the_old_lists_back_in_the_kernel(
    tmp_path: Path, steering: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload that fails after the new Allow / Deny went into the sk_lookup program
    (failpoint reload.opened, the last step) rolls them back with the rest: the kernel
    refuses whom the running config refuses. Without it the old routes served the new
    lists: the denied source got in and an allowed one was dropped."""
    backend = NamedEchoServer("b")
    port = 18001
    quiet = {"HealthCheck": {"Interval": 3600}}
    before = {"Apps": [app("x", [port], [backend.address], Deny=["127.0.0.2/32"], **quiet)]}
    after = {"Apps": [app("x", [port], [backend.address], Deny=["127.0.0.3/32"], **quiet)]}
    monkeypatch.setenv("FASTPROXY_FAILPOINTS", "reload.opened")
    proxy = Proxy(tmp_path, {**before, **steering})
    monkeypatch.delenv("FASTPROXY_FAILPOINTS")
    assert proxy.steering == "bpf"
    proxy.write_config_unnoticed({**after, **steering})  # only the SIGHUPs below apply it
    proxy.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while proxy.status()["reloads"]["failure"] == 0:
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.05)
    assert "failpoint reload.opened" in proxy.log()
    assert not through(port, "127.0.0.2")  # still denied, as the running config says
    assert through(port, "127.0.0.3")
    # The same reload, now whole: the new list is the one the kernel holds.
    proxy.proc.send_signal(signal.SIGHUP)
    while proxy.status()["reloads"]["success"] == 0:
        assert time.monotonic() < deadline + 10, proxy.log()
        time.sleep(0.05)
    assert through(port, "127.0.0.2")
    assert not through(port, "127.0.0.3")
    proxy.stop()
    backend.close()
