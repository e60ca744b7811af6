"""`fastproxy reload` says what it could not apply (SPEC §13): exit 0 only when all of
the new config is in force, 3 naming the settings that need a restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fastproxy.backends import NamedEchoServer
from proxyproc import Proxy, app, free_ports


def reload_cli(proxy: Proxy) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fastproxy",
            "reload",
            "--admin",
            proxy.admin,
            "--token-file",
            str(proxy.token_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_reload_exits_3_naming_settings_that_need_a_restart(tmp_path: Path) -> None:
    backend = NamedEchoServer("b")
    port, new_port = free_ports(2)
    local = {"Steering": "ports", "Listen": "127.0.0.1", "Admin": "127.0.0.1:0"}
    config = {**local, "Apps": [app("a", [port], [backend.address])], "Workers": 2}
    proxy = Proxy(tmp_path, config)
    changed = {
        **local,
        "Apps": [app("a", [port, new_port], [backend.address])],
        "Workers": 1,
        "Relay": "copy",
    }
    proxy.write_config_unnoticed(changed)
    answer = reload_cli(proxy)
    assert answer.returncode == 3, answer
    assert answer.stderr.strip() == (
        "reloaded, except what needs a restart to take effect: Relay, Workers"
    )
    status = proxy.status()
    assert status["restart_required"] == ["Relay", "Workers"]
    assert status["workers"] == 2 and status["relay"] == "splice"  # kept until a restart
    assert sorted(status["apps"][0]["ports"]) == sorted([port, new_port])  # the rest applied
    shown = subprocess.run(
        [sys.executable, "-m", "fastproxy", "status", "--admin", proxy.admin],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "needs a restart to apply: Relay, Workers" in shown.stdout, shown

    # Back to what runs: everything is in force again, exit 0.
    proxy.write_config_unnoticed(config)
    answer = reload_cli(proxy)
    assert answer.returncode == 0 and answer.stdout.strip() == "reloaded", answer
    assert proxy.status()["restart_required"] == []
    assert proxy.stop() == 0
