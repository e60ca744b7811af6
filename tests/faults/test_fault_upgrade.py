"""An upgrade (`fastproxy serve CONFIG --takeover`) that fails at each step, in both
steering modes: the running process serves every port throughout (probed without a
pause, 0 failures) and a reload of it afterwards still takes effect."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastproxy.backends import NamedEchoServer
from faultkit import Prober, open_state
from faultnet import namespace
from proxyproc import ROOT, Proxy, app, free_ports
from records import Tally

HANDED_OVER = b"listening sockets handed over"
YIELDED = b"a new process is serving"


@contextlib.contextmanager
def steering(mode: str) -> Iterator[tuple[dict[str, Any], str | None]]:
    """(config keys, netns of the clients): bpf runs in a fresh netns."""
    if mode == "ports":
        yield {"Steering": "ports"}, None
        return
    if os.geteuid() != 0:
        pytest.skip("bpf steering needs root")
    with namespace() as ns:
        yield {"Steering": "bpf", "Listen": "::"}, ns


def start_successor(
    tmp_path: Path, config: dict[str, Any], control_socket: str
) -> subprocess.Popen:
    tmp_path.mkdir()
    path = tmp_path / "fastproxy.json"
    path.write_text(json.dumps(config))
    log = open(tmp_path / "fastproxy.log", "wb")  # noqa: SIM115 - the child writes it
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastproxy",
            "serve",
            str(path),
            "--takeover",
            "--control-socket",
            control_socket,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def wait_log(proxy: Proxy, text: bytes, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in proxy.log_path.read_bytes():
        assert time.monotonic() < deadline, f"{text!r} never logged: {proxy.log()}"
        time.sleep(0.002)


# The successor logs this from inside its start (signal handlers installed, READY
# not sent yet): the moment for "mid-start".
IN_START = b"does not resolve"
ITEM6 = "issue 9 item 6: upgrade is not two-phase"
CASES = [
    pytest.param("ports", "busy-admin"),
    pytest.param("ports", "kill9-at-handover"),
    pytest.param("ports", "kill9-mid-start"),
    pytest.param(
        "ports",
        "sigterm-during-start",
        marks=pytest.mark.xfail(
            strict=True, reason=f"{ITEM6}: the successor sends READY and exits, the old drains"
        ),
    ),
    pytest.param(
        "bpf",
        "busy-admin",
        marks=pytest.mark.xfail(
            strict=True, reason=f"{ITEM6}: the failed successor removes the old's steering"
        ),
    ),
    pytest.param("bpf", "kill9-at-handover"),
    pytest.param("bpf", "kill9-mid-start"),
    pytest.param(
        "bpf",
        "sigterm-during-start",
        marks=pytest.mark.xfail(
            strict=True, reason=f"{ITEM6}: the successor sends READY and exits, the old drains"
        ),
    ),
]


def stop_mid_start(successor: subprocess.Popen, log: Path, sig: signal.Signals) -> None:
    """Freeze the successor as soon as it logs from inside its start, then signal it."""
    deadline = time.monotonic() + 30
    while IN_START not in log.read_bytes():
        assert successor.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the successor never started"
        time.sleep(0.001)
    successor.send_signal(signal.SIGSTOP)
    successor.send_signal(sig)
    successor.send_signal(signal.SIGCONT)


@pytest.mark.parametrize(("mode", "step"), CASES)
def test_failed_upgrade_leaves_the_old_process_serving(
    tmp_path: Path, tally: Tally, mode: str, step: str
) -> None:
    with steering(mode) as (keys, ns):
        failed_upgrade(tmp_path, tally, keys, ns, step)


def failed_upgrade(
    tmp_path: Path, tally: Tally, keys: dict[str, Any], ns: str | None, step: str
) -> None:
    backends = [NamedEchoServer(f"b{i}") for i in range(2)]
    ports = free_ports(4)
    admin_port, extra_port, dns_port = free_ports(3)
    config = {
        "Apps": [
            app("web", ports, [b.address for b in backends]),
            app("dns", [dns_port], ["unresolvable.invalid:80"]),
        ],
        "Admin": f"127.0.0.1:{admin_port}",
        **keys,
    }
    (tmp_path / "old").mkdir()
    old = Proxy(tmp_path / "old", config)
    prober = Prober(ports, ns=ns)
    try:
        time.sleep(0.5)
        successor_config = dict(config)
        busy = None
        if step == "busy-admin":
            busy = socket.create_server(("127.0.0.1", 0))
            successor_config["Admin"] = f"127.0.0.1:{busy.getsockname()[1]}"
        successor = start_successor(tmp_path / "new", successor_config, old.control_socket)
        try:
            if step == "busy-admin":
                assert successor.wait(60) != 0
            else:
                log = tmp_path / "new" / "fastproxy.log"
                if step == "kill9-at-handover":
                    wait_log(old, HANDED_OVER)
                    successor.send_signal(signal.SIGKILL)
                elif step == "kill9-mid-start":
                    stop_mid_start(successor, log, signal.SIGKILL)
                else:
                    stop_mid_start(successor, log, signal.SIGTERM)
                successor.wait(60)
        finally:
            if successor.poll() is None:
                successor.kill()
                successor.wait(10)
            if busy is not None:
                busy.close()
        time.sleep(1.0)  # keep probing after the successor is gone
        yielded = YIELDED in old.log_path.read_bytes()
        tally.note(f"successor exit status {successor.returncode}")
        # A reload of the old process still takes effect (bpf: its steering map too).
        before = old.status()["reloads"]["success"]
        old.write_config(
            {**config, "Apps": [app("web", [*ports, extra_port], config["Apps"][0]["Targets"])]}
        )
        old.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while old.status()["reloads"]["success"] == before:
            assert time.monotonic() < deadline, f"the reload did not happen: {old.log()}"
            time.sleep(0.05)
        prober.ports = [*ports, extra_port]
        time.sleep(1.0)
    finally:
        prober.stop()
    tally.connections += prober.ok + len(prober.failures)
    tally.failures += len(prober.failures)
    assert not yielded, "the old process stopped accepting for a successor that never served"
    assert prober.failures == [], prober.failures[:5]
    assert old.proc.poll() is None
    state = open_state(old)
    assert state["connections"] == state["app_active"] == state["target_active"] == 0, state
    assert old.stop() == 0
