"""DNS: a slow or failing resolver never makes a resolved target unroutable, and the
thread that re-resolves survives unexpected errors.

The proxy runs in a fresh network and mount namespace whose /etc/hosts and
/etc/resolv.conf are files of the test, so names change under it for real, and the
"DNS server" is a UDP socket that never answers."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastproxy import netns
from fastproxy.backends import NamedEchoServer
from proxyproc import Proxy, app, free_ports
from servers import talk

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")


@pytest.fixture
def resolver(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """(hosts file, argv prefix running a command with it and a silent DNS server)."""
    hosts = tmp_path / "hosts"
    resolv = tmp_path / "resolv.conf"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 backend.test\n")
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:3 attempts:2\n")
    with netns.temporary("fpdns"):
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 53))  # queries arrive and are never answered
        script = 'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && '
        script += 'shift 2 && exec "$@"'
        prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        yield hosts, [*prefix, "sh", str(hosts), str(resolv)]
        silent.close()


def answer(port: int) -> str:
    return talk(port, b"x").partition(b"\n")[0].decode()


def test_reload_with_a_silent_resolver_keeps_the_last_good_address(
    tmp_path: Path, resolver: tuple[Path, list[str]]
) -> None:
    hosts, prefix = resolver
    backend = NamedEchoServer("named")
    other = NamedEchoServer("other")
    web, extra = free_ports(2)
    apps = [app("web", [web], [f"backend.test:{backend.port}"])]
    proxy = Proxy(tmp_path, {"Apps": apps}, prefix=prefix)
    assert answer(web) == "named"
    hosts.write_text("127.0.0.1 localhost\n")  # in place: the bind mount keeps the inode
    proxy.write_config(
        {
            "Steering": "ports",
            "Listen": "127.0.0.1",
            "Admin": "127.0.0.1:0",
            "Apps": [*apps, app("extra", [extra], [other.address])],
        }
    )
    proxy.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while proxy.status()["reloads"]["success"] == 0:
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.1)
    assert answer(extra) == "other"
    assert answer(web) == "named"  # the lookup timed out; the last good answer stays
    [target] = proxy.status()["apps"][0]["targets"]
    assert target["state"] == "up" and target["resolved"] == "127.0.0.1"
    assert proxy.stop() == 0
    backend.close()
    other.close()


def test_dns_thread_survives_an_unexpected_error(
    tmp_path: Path, resolver: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts, prefix = resolver
    first = NamedEchoServer("first", host="127.0.0.1")
    second = NamedEchoServer("second", host="127.0.0.2", port=first.port)
    [web] = free_ports(1)
    check = {"Interval": 0.2, "Timeout": 0.2, "Rise": 1, "Fall": 1}
    apps = [app("web", [web], [f"backend.test:{first.port}"], HealthCheck=check)]
    monkeypatch.setenv("FASTPROXY_FAILPOINTS", "dns.refresh")
    proxy = Proxy(tmp_path, {"Apps": apps}, prefix=prefix)
    monkeypatch.delenv("FASTPROXY_FAILPOINTS")
    assert answer(web) == "first"
    # The backend moves: its old address dies, the name points at the new one. The first
    # refresh fails (the failpoint); the thread must go on and find the new address.
    hosts.write_text("127.0.0.1 localhost\n127.0.0.2 backend.test\n")
    first.close()
    deadline = time.monotonic() + 30
    while True:
        try:
            if answer(web) == "second":
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.2)
    assert "DNS refresh failed (will retry): FailpointError" in proxy.log()
    assert proxy.stop() == 0
    second.close()
