"""Config files an operator can live with (SPEC §13): TOML with comments, durations
with units, warnings for values that are valid but probably a mistake, and a file
watcher that can be turned off."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastproxy.backends import NamedEchoServer
from fastproxy.config import ConfigError, load_config
from proxyproc import Proxy, app, free_ports, wait_for_port

TOML = """\
# The challenge's config, in TOML: comments are allowed here.
Listen = "127.0.0.1"

[[Apps]]
Name = "five-thousand"   # an app
Ports = [5001, 5200]
Targets = ["127.0.0.1:6001", {Address = "127.0.0.1:6002", Weight = 3}]
ConnectTimeout = "250ms"
IdleTimeout = "5m"

[Apps.HealthCheck]
Interval = "2s"
Timeout = 0.5
"""


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastproxy", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_toml_with_comments_loads_like_the_same_json(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(TOML)
    as_json = {
        "Listen": "127.0.0.1",
        "Apps": [
            {
                "Name": "five-thousand",
                "Ports": [5001, 5200],
                "Targets": ["127.0.0.1:6001", {"Address": "127.0.0.1:6002", "Weight": 3}],
                "ConnectTimeout": 0.25,
                "IdleTimeout": 300,
                "HealthCheck": {"Interval": 2, "Timeout": 0.5},
            }
        ],
    }
    (tmp_path / "c.json").write_text(json.dumps(as_json))
    toml, plain = load_config(tmp_path / "c.toml"), load_config(tmp_path / "c.json")
    assert toml.apps == plain.apps and toml.listen == plain.listen
    assert toml.apps[0].connect_timeout == 0.25 and toml.apps[0].idle_timeout == 300
    result = check(tmp_path / "c.toml")
    assert result.returncode == 0 and "OK, 1 app, 2 ports, 2 targets" in result.stdout


def test_bad_toml_and_bad_durations_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[[Apps]]\nName = "x"\nPorts = [1,, 2]\n')
    result = check(tmp_path / "bad.toml")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {tmp_path / 'bad.toml'}: invalid TOML: ") and "line" in line

    config = {"Apps": [app("x", [1], ["127.0.0.1:2"], ConnectTimeout="2 weeks")]}
    (tmp_path / "bad.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r'ConnectTimeout: expected a duration such as "250ms"'):
        load_config(tmp_path / "bad.json")
    for text, seconds in (("250ms", 0.25), ("2s", 2), ("5m", 300), ("1h", 3600), (" 3 ", 3)):
        config = {"Apps": [app("x", [1], ["127.0.0.1:2"], ConnectTimeout=text)]}
        (tmp_path / "ok.json").write_text(json.dumps(config))
        assert load_config(tmp_path / "ok.json").apps[0].connect_timeout == seconds


def test_implausible_values_warn_but_pass(tmp_path: Path) -> None:
    # An HAProxy habit: milliseconds where fastproxy takes seconds; and a timeout that
    # is not below its interval.
    checks = {"Interval": 2000, "Timeout": 1}
    config = {
        "Apps": [
            app("ms", [1], ["127.0.0.1:2"], HealthCheck=checks),
            app("slow", [3], ["127.0.0.1:4"], HealthCheck={"Interval": 1, "Timeout": 1}),
        ]
    }
    (tmp_path / "c.json").write_text(json.dumps(config))
    result = check(tmp_path / "c.json")
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        'warning: app "ms": HealthCheck.Interval is 2000s, over 10 minutes (durations are'
        ' seconds: write "2000ms" for milliseconds)',
        'warning: app "slow": HealthCheck.Timeout (1s) is not below HealthCheck.Interval'
        " (1s): a slow check is still running when the next one is due",
    ]


def test_no_watch_applies_a_saved_file_only_on_an_explicit_reload(tmp_path: Path) -> None:
    backend = NamedEchoServer("b")
    port, later = free_ports(2)
    proxy = Proxy(tmp_path, {"Apps": [app("a", [port], [backend.address])]}, "--no-watch")
    changed = {
        "Steering": "ports",
        "Listen": "127.0.0.1",
        "Admin": "127.0.0.1:0",
        "Apps": [app("a", [port, later], [backend.address])],
    }
    proxy.write_config(changed)  # a new inode and mtime: a watcher would see it at once
    time.sleep(2.5)  # the watcher looks every second or so
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", later), timeout=2)
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for_port(later, timeout=10)
    assert proxy.stop() == 0
