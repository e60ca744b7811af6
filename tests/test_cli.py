"""The command line as an operator meets it: one-line errors, exit codes, no
tracebacks, for every config error class of SPEC section 1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fastproxy.cli import format_status
from proxyproc import ROOT

GOOD_APP = {"Name": "a", "Ports": [5001], "Targets": ["127.0.0.1:9000"]}

BAD_CONFIGS = {
    "duplicate port": (
        {"Apps": [GOOD_APP, {"Name": "b", "Ports": [5001], "Targets": ["127.0.0.1:9001"]}]},
        ['app "b"', "Ports", "5001", 'app "a"'],
    ),
    "duplicate app name": (
        {"Apps": [GOOD_APP, {"Name": "a", "Ports": [5002], "Targets": ["127.0.0.1:9001"]}]},
        ['"a"', "Name", "duplicate"],
    ),
    "port out of range": (
        {"Apps": [{"Name": "a", "Ports": [70000], "Targets": ["127.0.0.1:9000"]}]},
        ['app "a"', "Ports", "70000"],
    ),
    "empty targets": (
        {"Apps": [{"Name": "a", "Ports": [5001], "Targets": []}]},
        ['app "a"', "Targets", "empty"],
    ),
    "malformed host:port": (
        {"Apps": [{"Name": "a", "Ports": [5001], "Targets": ["no-port-here"]}]},
        ['app "a"', "Targets", "no-port-here"],
    ),
    "bare IPv6 target": (
        {"Apps": [{"Name": "a", "Ports": [5001], "Targets": ["::1:80"]}]},
        ['app "a"', "Targets", "[::1]:80"],
    ),
    "wrong type": (
        {"Apps": [{"Name": "a", "Ports": "5001,5002", "Targets": ["127.0.0.1:9000"]}]},
        ['app "a"', "Ports", "expected"],
    ),
    "unknown key": (
        {"Apps": [{"Name": "a", "Ports": [5001], "Targts": ["127.0.0.1:9000"]}]},
        ['app "a"', "Targts", 'did you mean "Targets"'],
    ),
    "target weight": (
        {"Apps": [{**GOOD_APP, "Targets": [{"Address": "127.0.0.1:9000", "Weight": 0}]}]},
        ['app "a"', "Targets[0].Weight", "between 1 and 1000"],
    ),
    "target backup": (
        {"Apps": [{**GOOD_APP, "Targets": [{"Address": "127.0.0.1:9000", "Backup": 1}]}]},
        ['app "a"', "Targets[0].Backup", "true or false"],
    ),
    "health check type": (
        {"Apps": [{**GOOD_APP, "HealthCheck": {"Type": "udp"}}]},
        ['app "a"', "HealthCheck.Type", '"udp"'],
    ),
    "health check expect": (
        {"Apps": [{**GOOD_APP, "HealthCheck": {"Type": "send-expect", "Send": "PING"}}]},
        ['app "a"', "HealthCheck.Expect", "missing"],
    ),
    "health check status": (
        {"Apps": [{**GOOD_APP, "HealthCheck": {"Type": "http", "ExpectStatus": "2xx"}}]},
        ['app "a"', "HealthCheck.ExpectStatus", '"2xx"'],
    ),
    "unknown top-level key": (
        {"Apps": [GOOD_APP], "Steerin": "bpf"},
        ["Steerin", 'did you mean "Steering"'],
    ),
}


def fastproxy(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastproxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.parametrize("command", ["check", "serve"])
@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_config_errors_are_one_line(tmp_path: Path, command: str, case: str) -> None:
    config, expected = BAD_CONFIGS[case]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    result = fastproxy(command, str(path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "bad.json" in lines[0]
    for part in expected:
        assert part in lines[0], (part, lines[0])


@pytest.mark.parametrize("content", ["", "{", "[1, 2]", '{"Apps": 3}', "\x00\xff"])
def test_broken_files_are_one_line(tmp_path: Path, content: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content, errors="surrogateescape")
    result = fastproxy("check", str(path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "broken.json" in result.stderr


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _huge(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate((16 << 20) + 1)
    return path


@pytest.mark.parametrize(
    ("kind", "make", "reason"),
    [
        ("dir", lambda p: p.mkdir() or p, "is a directory"),
        ("fifo", _fifo, "is a FIFO"),
        ("huge", _huge, "larger than 16 MiB"),
        ("device", lambda p: Path("/dev/zero"), "is a device"),
    ],
)
def test_check_refuses_what_is_not_a_config_file(
    tmp_path: Path, kind: str, make: Callable[[Path], Path], reason: str
) -> None:
    path = make(tmp_path / "proxy.json")
    result = fastproxy("check", str(path), timeout=10)  # a FIFO must not block
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {path}: ")
    assert len(result.stderr.strip().splitlines()) == 1 and reason in result.stderr


def test_check_summary_shows_weights_backups_and_check_types(tmp_path: Path) -> None:
    targets = [
        {"Address": "127.0.0.1:9000", "Weight": 3},
        {"Address": "127.0.0.1:9001", "Backup": True},
    ]
    checks = [
        {"Type": "send-expect", "Send": "PING\\r\\n", "Expect": "+PONG"},
        {"Type": "http", "Path": "/up", "ExpectStatus": "200-299"},
    ]
    apps = [
        {"Name": f"a{i}", "Ports": [5001 + i], "Targets": targets, "HealthCheck": check}
        for i, check in enumerate(checks)
    ]
    path = tmp_path / "good.json"
    path.write_text(json.dumps({"Apps": apps}))
    result = fastproxy("check", str(path))
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:9000 (weight 3), 127.0.0.1:9001 (backup)" in result.stdout
    assert 'send-expect send "PING\\r\\n" expect "+PONG"' in result.stdout
    assert "http GET /up expect status 200-299" in result.stdout


def test_missing_file(tmp_path: Path) -> None:
    result = fastproxy("serve", str(tmp_path / "nope.json"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "nope.json" in result.stderr


def test_check_accepts_the_challenge_config_unchanged() -> None:
    result = fastproxy("check", "examples/challenge.json")
    assert result.returncode == 0, result.stderr
    assert "five-thousand" in result.stdout and "six-thousand" in result.stdout
    assert "bad.target.for.testing:6003" in result.stdout


@pytest.mark.parametrize("steering", ["ports", "bpf"])
def test_port_in_use_is_a_one_line_error(tmp_path: Path, steering: str) -> None:
    """ports: the bind fails; bpf: the sock_diag dump finds the listener, the trial bind
    fails (refused before anything is attached)."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    path = tmp_path / "busy.json"
    config = {"Apps": [{"Name": "busy", "Ports": [port], "Targets": ["127.0.0.1:9"]}]}
    path.write_text(json.dumps({**config, "Listen": "127.0.0.1", "Steering": steering}))
    result = fastproxy("serve", str(path))
    blocker.close()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "busy" in result.stderr
    # One line, the same in both modes, naming who holds the port (this test's process).
    (line,) = result.stderr.splitlines()
    held = (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use (by pid {os.getpid()}: "
    )
    assert line.startswith(held) and line.endswith(') (app "busy")'), line


def test_version_and_help() -> None:
    from fastproxy import __version__

    assert fastproxy("--version").stdout.strip().endswith(__version__)
    # config and cluster are imported only when named (cli._Commands): still listed and run
    for command in ("serve", "check", "demo", "status", "reload", "target", "config", "cluster"):
        result = fastproxy(command, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout


def test_status_table_shows_weight_backup_and_failed_checks() -> None:
    target = {"state": "up", "active": 0, "connections": 0, "connect_failures": 0}
    status = {
        "version": "x",
        "steering": "ports",
        "apps": [
            {
                "name": "a",
                "ports": [1],
                "balance": "round-robin",
                "active": 0,
                "connections": 0,
                "bytes_in": 0,
                "bytes_out": 0,
                "targets": [
                    {**target, "address": "h:1", "weight": 3, "backup": False},
                    {
                        **target,
                        "address": "h:2",
                        "weight": 1,
                        "backup": True,
                        "last_check": {"ok": False, "error": "HTTP status 500", "at": 0},
                    },
                ],
            }
        ],
    }
    rows = format_status(status).splitlines()[-2:]
    assert rows[0].endswith("  weight 3") and rows[0].lstrip().startswith("h:1")
    assert rows[1].endswith("  backup, check: HTTP status 500")


def test_start_up_imports_no_metrics_library() -> None:
    """prometheus_client (and the http.server, email and urllib it pulls in) is a tenth of
    the start-up: it loads at the first /metrics scrape (test_admin), not before."""
    modules = "fastproxy.cli, fastproxy.process, fastproxy.listeners.steered, fastproxy.steering"
    code = f"import sys, {modules}; print(sorted(m for m in sys.modules if 'prometheus' in m))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_target_actions_are_subcommands_with_their_own_help() -> None:
    for action, words in (("drain", "checks go on"), ("disable", "no checks"), ("enable", "back")):
        result = fastproxy("target", action, "--help")
        assert result.returncode == 0, result.stderr
        assert f"Usage: fastproxy target {action} [OPTIONS] APP TARGET" in result.stdout
        assert words in result.stdout
