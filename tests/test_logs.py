"""Log lines for journald, for log pipelines and for terminals (SPEC §13)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from fastproxy import __version__
from fastproxy.backends import NamedEchoServer
from proxyproc import Proxy, app, free_ports


def one_app(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Proxy:
    backend = NamedEchoServer("b")
    (port,) = free_ports(1)
    checks = {"Interval": 0.2, "Timeout": 0.1}
    config = {"Apps": [app("a", [port], [backend.address], HealthCheck=checks)]}
    return Proxy(tmp_path, config, *args, env=env)


def test_text_lines_carry_utc_iso_times_and_count_in_words(tmp_path: Path) -> None:
    proxy = one_app(tmp_path)
    line = next(x for x in proxy.log().splitlines() if "serving" in x)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z fastproxy INFO serving 1 app on 1 port \(.*\)",
        line,
    ), line
    assert proxy.stop() == 0


def test_under_journald_lines_carry_priorities_and_no_time(tmp_path: Path) -> None:
    log = tmp_path / "fastproxy.log"
    log.touch()  # Proxy reopens it with O_TRUNC: same inode, so it is "the journal stream"
    st = os.stat(log)
    proxy = one_app(tmp_path, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    proxy.write_config({"Apps": [{"Name": "a", "Ports": [1], "Targets": []}]})  # invalid
    deadline = time.monotonic() + 10
    while "<3>reload (file changed) rejected" not in proxy.log():
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.05)
    lines = proxy.log().splitlines()
    assert any(re.fullmatch(r"<6>serving 1 app on 1 port \(.*\)", x) for x in lines), lines
    assert all(re.match(r"<[0-7]>", x) for x in lines), lines
    assert proxy.stop() == 0


def test_json_lines_and_debug_lines_of_each_reload_step(tmp_path: Path) -> None:
    proxy = one_app(tmp_path, "--log-format", "json", "--log-level", "debug")
    config = json.loads(proxy.config_path.read_text())
    config["Apps"][0]["Ports"].append(free_ports(1)[0])
    proxy.write_config_unnoticed(config)
    proxy.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    # The reload, and a health check (the first comes at a random point of its interval).
    while "reloaded (SIGHUP)" not in proxy.log() or "check passed" not in proxy.log():
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.05)
    assert proxy.stop() == 0
    entries = [json.loads(line) for line in proxy.log().splitlines()]
    assert all(set(e) >= {"time", "level", "message"} for e in entries), entries
    assert all(e["time"].endswith("Z") for e in entries)
    messages = [e["message"] for e in entries if e["level"] == "debug"]
    for step in (
        "reload: ",
        "reload: prepared: 1 port to add, 0 ports to remove",
        "reload: removed ports stopped accepting",
        "reload: routes of 1 app published",
        "reload: added ports accept",
    ):
        assert any(m.startswith(step) for m in messages), (step, messages)
    assert any("check passed" in m for m in messages), messages  # health checks


def test_dash_capital_v_prints_the_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fastproxy", "-V"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and out.stdout.strip() == f"fastproxy, version {__version__}"
