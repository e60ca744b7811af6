"""A soak: mixed load for a while (45 s short, 30 min long), a reload every 10 s and
an upgrade halfway (long: every 5 minutes), with RSS and descriptors sampled every
second: flat within each process, nothing lost, nothing left open."""

from __future__ import annotations

import os
import signal
import statistics
import time
from pathlib import Path

import pytest

from conftest import VARIANTS, needs_root
from faultkit import Load, TargetProcess, assert_nothing_left_open, assert_serves, open_state
from faultnet import namespace
from proxyproc import Proxy, app, free_ports
from records import Tally

# (seconds, upgrade every): short: one upgrade, halfway.
PLAN = {"short": (45, 22.5), "long": (1800, 300)}
RELOAD_EVERY = 10.0
FAILED = ("corrupt", "hang", "refused", "cut")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def assert_flat(name: str, samples: list[int], slack: float, tally: Tally) -> None:
    """The last third of a process's samples is no higher than its first third
    (medians), allowing `slack` (relative) for noise."""
    third = len(samples) // 3
    first, last = statistics.median(samples[:third]), statistics.median(samples[-third:])
    tally.note(f"{name}: median {first:.0f} in the first third, {last:.0f} in the last")
    assert last <= first * (1 + slack) + 2048, f"{name} grew: {first} -> {last} ({samples})"


@needs_root
@pytest.mark.parametrize("variant", VARIANTS)
def test_soak_with_reloads_and_upgrades(tmp_path: Path, tally: Tally, variant: str) -> None:
    with namespace() as ns:  # a thousand connections a second: its own ephemeral ports
        soak(tmp_path, tally, variant, ns)


def soak(tmp_path: Path, tally: Tally, variant: str, ns: str) -> None:
    seconds, upgrade_every = PLAN[variant]
    targets = [TargetProcess("echo") for _ in range(2)]
    port, extra = free_ports(2)
    configs = [
        {"Apps": [app("soak", [port], [t.address for t in targets])]},
        {"Apps": [app("soak", [port, extra], [t.address for t in reversed(targets)])]},
    ]
    (tmp_path / "0").mkdir()
    proxy = Proxy(tmp_path / "0", configs[0])
    baseline = open_state(proxy)
    load = Load(port, threads=3, sizes=(1, 256 << 10), ns=ns)
    samples: dict[int, list[tuple[int, int]]] = {}
    reloads = upgrades = 0
    started = time.monotonic()
    next_reload, next_upgrade = started + RELOAD_EVERY, started + upgrade_every
    try:
        while (now := time.monotonic()) < started + seconds:
            samples.setdefault(proxy.pid, []).append(
                (rss_kib(proxy.pid), len(os.listdir(f"/proc/{proxy.pid}/fd")))
            )
            if now >= next_reload:
                proxy.write_config_unnoticed({**configs[(reloads + 1) % 2], **FULL})
                proxy.proc.send_signal(signal.SIGHUP)
                reloads += 1
                next_reload += RELOAD_EVERY
            if now >= next_upgrade:
                upgrades += 1
                (tmp_path / str(upgrades)).mkdir()
                old = proxy
                proxy = Proxy(
                    tmp_path / str(upgrades),
                    configs[reloads % 2],
                    "--takeover",
                    "--control-socket",
                    old.control_socket,
                )
                assert old.proc.wait(60) == 0
                next_upgrade += upgrade_every
            time.sleep(1)
    finally:
        outcome = load.stop()
    tally.count(outcome, FAILED)
    tally.note(f"{seconds:.0f}s, {reloads} reloads, {upgrades} upgrades: {dict(outcome)}")
    assert outcome["ok"] > 0 and sum(outcome[k] for k in FAILED) == 0, outcome
    assert proxy.status()["reloads"]["failure"] == 0
    for number, series in enumerate(samples.values(), 1):
        if len(series) >= 9:
            assert_flat(f"process {number} RSS KiB", [rss for rss, _ in series], 0.10, tally)
            assert_flat(f"process {number} descriptors", [fds for _, fds in series], 0.10, tally)
    extra_listening = extra in configs[reloads % 2]["Apps"][0]["Ports"]
    assert_nothing_left_open(proxy, {**baseline, "sockets": baseline["sockets"] + extra_listening})
    tally.count(assert_serves(port), FAILED)
    assert proxy.stop() == 0


FULL = {"Steering": "ports", "Listen": "127.0.0.1", "Admin": "127.0.0.1:0"}
