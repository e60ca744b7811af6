"""Upgrades and reloads that fail at any step leave the running proxy whole: every
port served, its steering program in effect, reloads still taking effect."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import proxyproc
from fastproxy import netns
from fastproxy.backends import NamedEchoServer
from proxyproc import ROOT, Proxy, app, free_ports, wait_for_port
from servers import talk


def answers(port: int) -> str:
    name, _, echo = talk(port, b"ping").partition(b"\n")
    assert echo == b"ping", f"port {port}: {name!r} {echo!r}"
    return name.decode()


def serves_every_port(ports: list[int], expected: set[str]) -> None:
    for port in ports:
        assert answers(port) in expected


def successor(
    tmp_path: Path, config: dict[str, Any], control: str, failpoints: str = ""
) -> subprocess.Popen[bytes]:
    """`fastproxy serve --takeover`, not waited for (it may be meant to fail)."""
    path = tmp_path / "successor.json"
    path.write_text(json.dumps({"AdminTokenFile": str(tmp_path / "admin-token"), **config}))
    env = {**os.environ, "FASTPROXY_FAILPOINTS": failpoints}
    cmd = [sys.executable, "-m", "fastproxy", "serve", str(path), "--takeover"]
    proc = subprocess.Popen(
        [*cmd, "--control-socket", control],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env,
    )
    proxyproc.RUNNING.append(Reaped(proc))  # a failed assertion must not leave it serving
    return proc


class Reaped:
    """A process the autouse fixture in conftest kills after the test, if still running."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_line(proc: subprocess.Popen[bytes], text: bytes, timeout: float = 60) -> bytes:
    """Read the process's output until text appears (bcc may take a while on a busy host)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            raise AssertionError(f"no {text!r} in: {seen.decode(errors='replace')}")
        seen += chunk
    return seen


def reload_applies(old: Proxy, config: dict[str, Any], new_port: int) -> None:
    """The old process still reloads: a port added to its config starts serving."""
    config["Apps"][0]["Ports"].append(new_port)
    old.write_config({"Admin": "127.0.0.1:0", **config})
    old.proc.send_signal(signal.SIGHUP)
    wait_for_port(new_port)
    assert answers(new_port).startswith("b")


@pytest.fixture
def two_apps() -> Iterator[tuple[dict[str, Any], list[int], list[NamedEchoServer]]]:
    backends = [NamedEchoServer(f"b{i}") for i in range(2)]
    ports = free_ports(4)
    apps = [
        app("one", ports[:2], [backends[0].address]),
        app("two", ports[2:], [backends[1].address]),
    ]
    yield {"Apps": apps}, ports, backends
    for b in backends:
        b.close()


def test_takeover_with_a_busy_admin_address_changes_nothing(
    tmp_path: Path, steering: dict[str, str], two_apps: Any
) -> None:
    """The outage reported in issue 9: a successor failing on its admin address used to
    remove the running process's steering program, leaving 0 ports served."""
    config, ports, _ = two_apps
    config = {**config, **steering}
    old = Proxy(tmp_path, config)
    busy = free_ports(1)[0]
    holder = socket.socket()
    holder.bind(("127.0.0.1", busy))
    holder.listen()
    try:
        new = successor(tmp_path, {**config, "Admin": f"127.0.0.1:{busy}"}, old.control_socket)
        out, _ = new.communicate(timeout=60)
        assert new.returncode == 1, out
        assert b"Traceback" not in out
        assert b"admin endpoint" in out.splitlines()[-1]
    finally:
        holder.close()
    serves_every_port(ports, {"b0", "b1"})
    assert "gave up; still serving" in old.log()
    reload_applies(old, config, free_ports(1)[0])
    assert old.stop() == 0


def test_successor_killed_before_ready_leaves_the_old_one_serving(
    tmp_path: Path, steering: dict[str, str], two_apps: Any
) -> None:
    config, ports, _ = two_apps
    config = {**config, **steering}
    old = Proxy(tmp_path, config)
    new = successor(tmp_path, config, old.control_socket, "takeover.before-ready=pause")
    wait_line(new, b"failpoint takeover.before-ready paused")
    serves_every_port(ports, {"b0", "b1"})  # both hold the sockets; only the old accepts
    new.kill()
    new.wait(10)
    time.sleep(0.2)
    serves_every_port(ports, {"b0", "b1"})
    reload_applies(old, config, free_ports(1)[0])
    # ...and a later takeover still works.
    (tmp_path / "next").mkdir()
    nxt = Proxy(tmp_path / "next", config, "--takeover", "--control-socket", old.control_socket)
    assert old.proc.wait(15) == 0
    serves_every_port(ports, {"b0", "b1"})
    assert nxt.stop() == 0


def test_sigterm_during_start_abandons_the_takeover(
    tmp_path: Path, steering: dict[str, str], two_apps: Any
) -> None:
    config, ports, _ = two_apps
    config = {**config, **steering}
    old = Proxy(tmp_path, config)
    new = successor(tmp_path, config, old.control_socket, "takeover.before-ready=delay")
    wait_line(new, b"failpoint takeover.before-ready delayed")
    new.send_signal(signal.SIGTERM)
    out, _ = new.communicate(timeout=30)
    assert new.returncode == 1, out
    assert b"stopped by a signal while starting" in out
    assert b"Traceback" not in out
    assert old.proc.poll() is None
    serves_every_port(ports, {"b0", "b1"})
    reload_applies(old, config, free_ports(1)[0])
    assert old.stop() == 0


def test_takeover_commit_failure_still_serves(
    tmp_path: Path, steering: dict[str, str], two_apps: Any
) -> None:
    """Past READY the successor must serve even if putting its own config into effect
    fails (bpf: swapping in its program; ports: opening its new ports): the ports it
    inherited are served (bpf: the predecessor's program steers to the very sockets it
    holds), the port new in its config is not, and the failure is logged."""
    config, ports, _ = two_apps
    config = {**config, **steering}
    old = Proxy(tmp_path, config)
    (new_port,) = free_ports(1)
    wanted = json.loads(json.dumps(config))
    wanted["Apps"][0]["Ports"].append(new_port)
    new = successor(tmp_path, wanted, old.control_socket, "takeover.commit")
    output = wait_line(new, b"serving")
    assert b"(failpoint takeover.commit)" in output, output  # the failure happened
    assert old.proc.wait(15) == 0
    serves_every_port(ports, {"b0", "b1"})
    with pytest.raises(ConnectionRefusedError):
        talk(new_port, b"x")
    new.send_signal(signal.SIGTERM)
    assert new.wait(15) == 0


def test_upgrade_hands_over_5000_listening_sockets(tmp_path: Path) -> None:
    """Thousands of descriptors cross the control socket in batches; none may be lost."""
    with netns.temporary("fpmany"):  # every port of the range is free in there
        backend = NamedEchoServer("many")
        config = {"Apps": [app("many", ["20000-24999"], [backend.address])]}
        old = Proxy(tmp_path, config)
        (tmp_path / "new").mkdir()
        new = Proxy(tmp_path / "new", config, "--takeover", "--control-socket", old.control_socket)
        assert old.proc.wait(30) == 0
        assert new.fd_count() >= 5000
        for port in (20000, 21234, 22500, 24999):
            assert answers(port) == "many"
        assert new.stop() == 0
        backend.close()


RELOAD_STEPS = [  # in order; listeners.open also runs for the 2 ports opened at start
    "reload.prepared",
    "listeners.retire",
    "reload.retired",
    "reload.routed",
    "listeners.open*3",
    "reload.opened",
]


@pytest.mark.parametrize("step", RELOAD_STEPS)
def test_reload_failing_at_any_step_keeps_the_running_config_whole(
    tmp_path: Path, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backends = [NamedEchoServer(f"r{i}") for i in range(2)]
    kept, removed, added = free_ports(3)
    before = {"Apps": [app("web", [kept, removed], [backends[0].address])]}
    after = {"Apps": [app("web", [kept, added], [backends[1].address])]}
    monkeypatch.setenv("FASTPROXY_FAILPOINTS", step)
    proxy = Proxy(tmp_path, before)
    monkeypatch.delenv("FASTPROXY_FAILPOINTS")
    # Unnoticed: the file watcher's own reload would retry it 0.3-0.55 s later, and succeed.
    proxy.write_config_unnoticed({"Steering": "ports", "Listen": "127.0.0.1", **after})
    proxy.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while proxy.status()["reloads"]["failure"] == 0:
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.05)
    # All of the old config, none of the new.
    assert answers(kept) == "r0"
    assert answers(removed) == "r0"
    with pytest.raises(ConnectionRefusedError):
        talk(added, b"x")
    assert f"failpoint {step.partition('*')[0]}" in proxy.log()
    # The failpoint fired once: the same reload now goes through whole.
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for_port(added)
    assert answers(added) == "r1" and answers(kept) == "r1"
    # The port answers once opened; the reload is counted when it commits, just after.
    # Until then a removed port's socket stays open for a rollback: a client landing in
    # its accept queue meanwhile is reset at the commit (listeners/ports.py), not refused.
    deadline = time.monotonic() + 10
    while proxy.status()["reloads"]["success"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.status()["reloads"] == {"success": 1, "failure": 1}
    with pytest.raises(ConnectionRefusedError):
        talk(removed, b"x")
    assert proxy.stop() == 0
    for b in backends:
        b.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf)")
@pytest.mark.parametrize("step", ["listeners.retire", "reload.routed", "listeners.open"])
def test_bpf_reload_failing_at_any_step_keeps_the_port_map(
    tmp_path: Path, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with netns.temporary("fpbpfreload"):
        backends = [NamedEchoServer(f"r{i}") for i in range(2)]
        kept, removed, added = free_ports(3)
        base = {"Steering": "bpf", "Listen": "::"}
        before = {**base, "Apps": [app("web", [kept, removed], [backends[0].address])]}
        after = {**base, "Apps": [app("web", [kept, added], [backends[1].address])]}
        monkeypatch.setenv("FASTPROXY_FAILPOINTS", step)
        proxy = Proxy(tmp_path, before)
        monkeypatch.delenv("FASTPROXY_FAILPOINTS")
        assert proxy.steering == "bpf"
        proxy.write_config_unnoticed({"Admin": "127.0.0.1:0", **after})  # only SIGHUP
        proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while proxy.status()["reloads"]["failure"] == 0:
            assert time.monotonic() < deadline, proxy.log()
            time.sleep(0.05)
        assert answers(kept) == "r0" and answers(removed) == "r0"
        with pytest.raises(ConnectionRefusedError):
            talk(added, b"x")
        assert proxy.stop() == 0
        for b in backends:
            b.close()
