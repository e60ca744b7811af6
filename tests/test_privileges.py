"""Privilege drop (SPEC section 7, `User`): started as root, fastproxy binds, loads BPF,
then runs as the user with only the capabilities it still needs, and keeps serving,
reloading (a port below 1024 included) and upgrading. Each test in a fresh netns."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastproxy import netns, steering
from fastproxy.control.privileges import CAP_BPF, CAP_NET_ADMIN, CAP_NET_BIND_SERVICE
from fastproxy.steering import bpfsys, pins
from proxyproc import ROOT, Proxy, app, free_ports, wait_for_port
from servers import HashingEcho, talk

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root"),
    pytest.mark.timeout(120),
]

NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def ns() -> Iterator[int]:
    """A fresh netns entered by this thread (the proxy inherits it): any port is free."""
    with netns.temporary("fp-privs-systemd") as _:
        ino = netns.inode()
        yield ino
        # A proxy without root leaves its (detached) pins for the next start: remove them.
        directory = os.path.join(steering.DEFAULT_PIN_ROOT, str(ino))
        with contextlib.suppress(OSError):
            fd = bpfsys.obj_get(os.path.join(directory, "link"))
            with contextlib.suppress(OSError):
                bpfsys.link_detach(fd)
            os.close(fd)
        pins.remove_dir(directory)


@pytest.fixture
def rundir() -> Iterator[Path]:
    """A directory the user can reach (pytest's tmp_path is root's, 0700), for the
    control socket: like /run, where fastproxy makes its own 0700 directory."""
    path = Path(tempfile.mkdtemp(prefix="fp-privs-systemd-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def assert_dropped(pid: int, caps: int) -> None:
    """The process: all four uids and gids the user's, exactly `caps` permitted,
    effective and bounding, NO_NEW_PRIVS. Every thread: the user's ids, NO_NEW_PRIVS,
    and `caps` or none at all (threads started before the drop keep none)."""
    st = proc_status(pid)
    for field in ("CapPrm", "CapEff", "CapBnd"):
        assert int(st[field], 16) == caps, (field, st[field])
    for task in os.listdir(f"/proc/{pid}/task"):
        st = _task_status(pid, task)
        assert st["Uid"].split() == [str(NOBODY.pw_uid)] * 4, st["Uid"]
        assert st["Gid"].split() == [str(NOBODY.pw_gid)] * 4, st["Gid"]
        assert st["Groups"].split() == [str(NOBODY.pw_gid)]
        assert int(st["CapPrm"], 16) in (caps, 0) and st["CapEff"] == st["CapPrm"], task
        assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
        assert st["NoNewPrivs"] == "1"


def _task_status(pid: int, task: str) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def assert_serves(port: int) -> None:
    payload = os.urandom(1 << 20)
    assert hashlib.sha256(talk(port, payload)).digest() == hashlib.sha256(payload).digest()


def dropped_config(mode: str, target: str) -> dict[str, Any]:
    """One app on port 8080 to `target`, in `mode`, run as nobody."""
    return {
        "Apps": [app("web", [8080], [target])],
        "Steering": mode,
        "Listen": "::" if mode == "bpf" else "127.0.0.1",
        "User": "nobody",
    }


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastproxy", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


@pytest.mark.parametrize("mode", ["ports", "bpf"])
def test_runs_as_user_with_only_needed_caps_and_reloads_and_upgrades(
    mode: str, ns: int, rundir: Path
) -> None:
    caps = 1 << CAP_NET_BIND_SERVICE
    if mode == "bpf":
        caps |= 1 << CAP_NET_ADMIN | 1 << CAP_BPF
    echo = HashingEcho()
    config = dropped_config(mode, echo.address)
    control = str(rundir / "run" / "control.sock")
    (rundir / "run").mkdir(0o700)  # root's, as systemd's RuntimeDirectory makes it
    # The config is where the user can read it again for reloads.
    (rundir / "old").mkdir()
    (rundir / "new").mkdir()
    old = Proxy(rundir / "old", config, "--control-socket", control)
    assert old.steering == mode
    assert_dropped(old.pid, caps)
    assert_serves(8080)
    run = (rundir / "run").stat()
    assert (run.st_uid, run.st_mode & 0o777) == (NOBODY.pw_uid, 0o700)

    # A reload (SIGHUP) adds a port below 1024: the kept CAP_NET_BIND_SERVICE binds it.
    config["Apps"] = [app("web", [8080, 80], [echo.address])]
    old.write_config(config)
    old.proc.send_signal(signal.SIGHUP)
    try:
        wait_for_port(80)
    except OSError:
        raise AssertionError(old.log()) from None
    assert_serves(80)
    # The operator's commands, as root, against the proxy running as nobody.
    status = cli("status", "--admin", old.admin)
    assert status.returncode == 0 and "web" in status.stdout, status.stderr
    config["Apps"] = [app("web", [8080, 80, 81], [echo.address])]
    old.write_config(config)
    # The admin unix socket is the user's and private; the CLI goes through it.
    unix = Path(old.admin_socket).stat()
    assert (unix.st_uid, stat.S_IMODE(unix.st_mode)) == (NOBODY.pw_uid, 0o600)
    reload = cli("reload", "--admin-socket", old.admin_socket, "--token-file", str(old.token_file))
    assert reload.returncode == 0 and reload.stdout.strip() == "reloaded", reload.stderr
    assert_serves(81)
    assert old.status()["reloads"]["failure"] == 0

    # Upgrade: a new process started as root takes the sockets over and drops too.
    new = Proxy(rundir / "new", config, "--takeover", "--control-socket", control)
    assert old.proc.wait(30) == 0
    assert new.steering == mode
    assert_dropped(new.pid, caps)
    for port in (8080, 80, 81):
        assert_serves(port)
    status = cli("status", "--admin-socket", new.admin_socket)
    assert status.returncode == 0 and f"pid {new.pid}" in status.stdout, status.stderr
    assert "Traceback" not in old.log() + new.log()
    assert new.stop() == 0
    echo.backend.close()


def test_what_the_dropped_proxy_imports_late_it_loaded_before_the_drop(
    ns: int, rundir: Path
) -> None:
    """The first scrape, a reload with a typo and one naming a target by host, as the
    user: each imports modules at their first use. Here the interpreter's files are
    under root's 0700 home (pyenv), which the user cannot read: imported after the
    drop, /metrics answered 500 (ModuleNotFoundError), the typo "internal error"
    instead of its did-you-mean, and a host name failed to resolve (the idna codec)
    (control/preload.py loads them before the drop)."""
    echo = HashingEcho()
    config = dropped_config("ports", echo.address)
    control = str(rundir / "run" / "control.sock")
    (rundir / "run").mkdir(0o700)
    proxy = Proxy(rundir, config, "--control-socket", control)
    assert_dropped(proxy.pid, 1 << CAP_NET_BIND_SERVICE)
    assert_serves(8080)
    code, body = proxy.http("GET", "/metrics")
    assert code == 200 and b'fastproxy_connections_total{app="web"' in body, body[-300:]
    # Unnoticed, so SIGHUP alone reloads: the watcher would repeat each reload at its pace.
    proxy.write_config_unnoticed(
        {**config, "Apps": [{"Name": "web", "Ports": [8080], "Tragets": []}]}
    )
    proxy.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while proxy.status()["reloads"]["failure"] != 1:
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.05)
    assert 'Tragets: unknown key (did you mean "Targets"?)' in proxy.log(), proxy.log()
    # The first target named by host: the resolver's threads and the idna codec.
    successes = proxy.status()["reloads"]["success"]
    port = echo.address.rsplit(":", 1)[1]
    proxy.write_config_unnoticed({**config, "Apps": [app("web", [8080], [f"localhost:{port}"])]})
    proxy.proc.send_signal(signal.SIGHUP)
    while proxy.status()["reloads"]["success"] != successes + 1:
        assert time.monotonic() < deadline + 10, proxy.log()
        assert proxy.status()["reloads"]["failure"] == 1, proxy.log()
        time.sleep(0.05)
    assert "internal error" not in proxy.log() and "Traceback" not in proxy.log()
    assert_serves(8080)
    assert proxy.stop() == 0
    echo.backend.close()


def test_unknown_user_is_a_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(
        '{"Apps": [{"Name": "a", "Ports": [1], "Targets": ["127.0.0.1:9"]}],'
        ' "User": "fp-no-such-user"}'
    )
    result = cli("check", str(config))
    assert result.returncode == 2
    assert result.stderr == f'error: {config}: User: no such user "fp-no-such-user"\n'


def test_a_successor_killed_half_way_leaves_the_dropped_proxy_steering(
    ns: int, rundir: Path
) -> None:
    """The running proxy, without root, checks after an abandoned takeover that its
    program is still in effect (its pins are root's: out of its reach)."""
    echo = HashingEcho()
    config = dropped_config("bpf", echo.address)
    control = str(rundir / "run" / "control.sock")
    (rundir / "old").mkdir()
    old = Proxy(rundir / "old", config, "--control-socket", control)
    successor = subprocess.Popen(
        [sys.executable, "-m", "fastproxy", "serve", str(old.config_path), "--takeover",
         "--control-socket", control, "--admin", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "FASTPROXY_FAILPOINTS": "takeover.before-ready=pause"},
    )  # fmt: skip
    try:
        assert successor.stdout is not None
        while b"failpoint takeover.before-ready paused" not in successor.stdout.readline():
            assert successor.poll() is None
    finally:
        successor.kill()
        successor.wait(10)
    deadline = time.monotonic() + 10
    while "gave up; still serving" not in old.log():
        assert time.monotonic() < deadline, old.log()
        time.sleep(0.05)
    assert_serves(8080)
    assert "ERROR" not in old.log() and "Traceback" not in old.log()
    assert_dropped(old.pid, 1 << CAP_NET_BIND_SERVICE | 1 << CAP_NET_ADMIN | 1 << CAP_BPF)
    assert old.stop() == 0
    echo.backend.close()


def test_no_capability_to_drop_is_a_one_line_error_before_anything(
    tmp_path: Path, rundir: Path
) -> None:
    config = tmp_path / "c.json"
    (port,) = free_ports(1)
    config.write_text(json.dumps({"Apps": [app("a", [port], ["127.0.0.1:9"])], "User": "nobody"}))
    result = subprocess.run(
        ["setpriv", "--bounding-set", "-setuid", sys.executable, "-m", "fastproxy", "serve",
         str(config), "--control-socket", str(rundir / "run" / "c.sock")],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == "error: cannot drop privileges to nobody: no CAP_SETUID\n"
    assert not (rundir / "run").exists()
