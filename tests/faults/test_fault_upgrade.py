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
    tmp_path: Path, config: dict[str, Any], control_socket: str, failpoints: str = ""
) -> subprocess.Popen:
    tmp_path.mkdir()
    path = tmp_path / "fastproxy.json"
    path.write_text(json.dumps({"AdminTokenFile": str(tmp_path / "admin-token"), **config}))
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
        env={**os.environ, "FASTPROXY_FAILPOINTS": failpoints},
    )


def wait_log(proxy: Proxy, text: bytes, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in proxy.log_path.read_bytes():
        assert time.monotonic() < deadline, f"{text!r} never logged: {proxy.log()}"
        time.sleep(0.002)


CASES = [
    (mode, step)
    for mode in ("ports", "bpf")
    for step in ("busy-admin", "kill9-at-handover", "kill9-mid-start", "sigterm-during-start")
]
# The successor's failpoints (src/fastproxy/failpoints.py) stop it at an exact step.
FAILPOINTS = {
    # Killed as soon as the sockets are handed over; paused before READY in case the
    # kill comes later than that (a fast start), so it is always a kill before READY.
    "kill9-at-handover": ("takeover.before-ready=pause", b""),
    "kill9-mid-start": ("takeover.before-ready=pause", b"failpoint takeover.before-ready paused"),
    "sigterm-during-start": (
        "takeover.before-ready=delay",
        b"failpoint takeover.before-ready delayed",
    ),
}


def wait_file(path: Path, text: bytes, successor: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_bytes():
        assert successor.poll() is None, path.read_text()
        assert time.monotonic() < deadline, f"{text!r} never logged"
        time.sleep(0.01)


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
    admin_port, extra_port = free_ports(2)
    config = {
        "Apps": [
            app("web", ports, [b.address for b in backends]),
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
        failpoints, paused = FAILPOINTS.get(step, ("", b""))
        successor = start_successor(
            tmp_path / "new", successor_config, old.control_socket, failpoints
        )
        try:
            if step == "busy-admin":
                assert successor.wait(60) != 0
            elif step == "kill9-at-handover":
                wait_log(old, HANDED_OVER)
                successor.send_signal(signal.SIGKILL)
            else:
                wait_file(tmp_path / "new" / "fastproxy.log", paused, successor)
                kill = signal.SIGKILL if step == "kill9-mid-start" else signal.SIGTERM
                successor.send_signal(kill)
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
