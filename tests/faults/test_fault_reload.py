"""Reloads that fail at each step, under load: a config that is invalid JSON, a
directory, a FIFO, a file over 16 MiB or not UTF-8, each followed by a valid one.
The proxy keeps serving, every reload is answered and counted (the counters match
the answers and the log), and the watcher and SIGHUP still work afterwards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from faultkit import Load, TargetProcess, assert_nothing_left_open, assert_serves, open_state
from proxyproc import Proxy, app, free_ports
from records import Tally


def invalid_json(path: Path) -> None:
    path.write_text('{"Apps": [')


def directory(path: Path) -> None:
    path.mkdir()


def fifo(path: Path) -> None:
    os.mkfifo(path)


def huge(path: Path) -> None:
    # A valid config, but over the 16 MiB limit: refused whole, never parsed.
    port = free_ports(1)[0]
    config = json.dumps({"Listen": "127.0.0.1", "Apps": [app("h", [port], ["127.0.0.1:9"])]})
    path.write_bytes(config.encode().ljust(17 << 20))


def not_utf8(path: Path) -> None:
    path.write_bytes(b'{"Apps": [{"Name": "\xff\xfe"}]}')


BAD: dict[str, Callable[[Path], None]] = {
    "invalid-json": invalid_json,
    "directory": directory,
    "fifo": fifo,
    "huge": huge,
    "not-utf8": not_utf8,
}
CASES = [
    pytest.param("invalid-json", "short"),
    pytest.param("directory", "short"),
    pytest.param("fifo", "short"),
    pytest.param("huge", "short"),
    pytest.param("not-utf8", "short"),
    pytest.param("invalid-json", "long", marks=pytest.mark.soak),
    pytest.param("directory", "long", marks=pytest.mark.soak),
    pytest.param("not-utf8", "long", marks=pytest.mark.soak),
]
# Reloads per case (half of them bad): 200 in all for the short cases, 1,000 long.
RELOADS = {"short": 40, "long": 334}


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink() or path.is_fifo():
        path.unlink()


def post_reload(proxy: Proxy) -> int:
    try:
        return proxy.http("POST", "/reload")[0]
    except (TimeoutError, OSError):
        return 0  # no answer at all


@pytest.mark.parametrize(("bad", "variant"), CASES)
def test_reloads_that_fail_under_load(tmp_path: Path, tally: Tally, bad: str, variant: str) -> None:
    target = TargetProcess("echo")
    port, extra = free_ports(2)
    configs: list[dict[str, Any]] = [
        {"Apps": [app("r", [port], [target.address])]},
        {"Apps": [app("r", [port, extra], [target.address])]},
    ]
    proxy = Proxy(tmp_path, configs[0])
    full = json.loads(proxy.config_path.read_text())
    baseline = open_state(proxy)
    load = Load(port, threads=2, sizes=(1, 32 << 10))
    answers = {"good": 0, "bad": 0, "wrong": 0}
    try:
        count = RELOADS[variant] // (2 if bad == "huge" else 1)  # 17 MiB each: fewer
        for i in range(count // 2):
            remove(proxy.config_path)
            BAD[bad](proxy.config_path)
            answers["bad" if post_reload(proxy) == 400 else "wrong"] += 1
            if answers["wrong"]:
                break  # the failure is shown below; a hung reload would hang them all
            remove(proxy.config_path)
            proxy.write_config({**full, **configs[i % 2]})
            answers["good" if post_reload(proxy) == 200 else "wrong"] += 1
            if answers["wrong"]:
                break  # the failure is shown below; a hung reload would hang them all
    finally:
        outcome = load.stop()
    tally.count(outcome, ("corrupt", "hang", "refused", "cut"))
    tally.connections += answers["good"] + answers["bad"] + answers["wrong"]
    tally.failures += answers["wrong"]
    tally.note(f"{bad}: {sum(answers.values())} reloads by the admin endpoint, {answers}")
    assert answers["wrong"] == 0, answers
    assert outcome["ok"] > 0 and outcome["ok"] == sum(v for k, v in outcome.items() if k != "bytes")
    # The counters match what was answered and logged (the watcher saw some of the
    # changes too: its reloads are in the log and the counters as well).
    log = proxy.log()
    reloads = proxy.status()["reloads"]
    assert reloads["success"] == log.count("reloaded (")
    assert reloads["failure"] == log.count("rejected, the running config stays")
    assert log.count("reloaded (admin endpoint)") == answers["good"]
    assert log.count("reload (admin endpoint) rejected") == answers["bad"]
    # The last config is the one serving; the watcher and SIGHUP still work.
    last = configs[(count // 2 - 1) % 2]
    serves_extra = extra in last["Apps"][0]["Ports"]
    assert reachable(extra) == serves_extra
    before = reloads["success"]
    proxy.write_config({**full, **configs[not serves_extra]})  # the watcher reloads it
    wait_reloads(proxy, before + 1)
    assert reachable(extra) != serves_extra
    proxy.write_config_unnoticed({**full, **configs[serves_extra]})
    proxy.proc.send_signal(signal.SIGHUP)
    wait_reloads(proxy, before + 2)
    assert reachable(extra) == serves_extra
    assert_nothing_left_open(proxy, {**baseline, "sockets": baseline["sockets"] + serves_extra})
    tally.count(assert_serves(port), ("corrupt", "hang", "refused", "cut"))
    assert proxy.stop() == 0
    target.close()


def reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True


def wait_reloads(proxy: Proxy, success: int) -> None:
    deadline = time.monotonic() + 10
    while proxy.status()["reloads"]["success"] < success:
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.05)
