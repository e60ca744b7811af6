"""systemd integration (SPEC section 7): sd_notify from a real fastproxy to a real
NOTIFY_SOCKET, and the unit in packaging/ as systemd itself reads it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxyproc import ROOT, Proxy, app, free_ports

UNIT = ROOT / "packaging" / "fastproxy.service"


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, socket.socket]]:
    """(NOTIFY_SOCKET value, the datagram socket behind it), as systemd sets them up."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    else:
        name = f"fp-privs-systemd-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        address = "@" + name
    sock.settimeout(20)
    with sock:
        yield address, sock


def messages(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_reloading_and_stopping_are_notified(
    tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    address, sock = notify_socket
    (port,) = free_ports(1)
    proxy = Proxy(
        tmp_path,
        {"Apps": [app("a", [port], ["127.0.0.1:9"])]},
        env={"NOTIFY_SOCKET": address},
    )
    assert messages(sock) == ["READY=1"]

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    proxy.proc.send_signal(signal.SIGHUP)
    reloading = messages(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading[0] == "RELOADING=1" and len(reloading) == 2
    usec = re.fullmatch(r"MONOTONIC_USEC=(\d+)", reloading[1])
    assert usec and before <= int(usec.group(1)) <= after
    assert messages(sock) == ["READY=1"]

    proxy.proc.send_signal(signal.SIGTERM)
    assert messages(sock) == ["STOPPING=1"]
    assert proxy.stop() == 0


def test_the_unit_verifies(tmp_path: Path) -> None:
    """`fastproxy systemd-unit` prints a unit for this installation that systemd accepts;
    packaging/fastproxy.service is the same text for /usr/local/bin/fastproxy."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (package systemd)")
    from fastproxy.systemd_unit import unit_text

    assert UNIT.read_text() == unit_text("/usr/local/bin/fastproxy")
    config = tmp_path / "fastproxy.json"
    config.write_text("{}")
    printed = subprocess.run(
        [sys.executable, "-m", "fastproxy", "systemd-unit", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    entry = Path(sys.executable).parent / "fastproxy"
    lines = printed.splitlines()
    for line in (
        "Type=notify",
        f"ExecStartPre={entry} check {config}",
        f"ExecStart={entry} serve {config}",
        f"ExecReload={entry} reload --config {config}",
        "StateDirectory=fastproxy",
        "FileDescriptorStoreMax=131072",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RuntimeDirectory=fastproxy",
        "RuntimeDirectoryMode=0700",
    ):
        assert line in lines, line
    # Installed under a home directory (a venv in /root here): it must stay reachable.
    in_home = str(entry).startswith(("/root/", "/home/")) or str(config).startswith("/root/")
    assert ("ProtectHome=read-only" if in_home else "ProtectHome=yes") in lines
    unit = tmp_path / "fastproxy.service"
    unit.write_text(printed)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
