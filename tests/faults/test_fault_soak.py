"""A soak: mixed load for a while (45 s short, 30 min long), a reload every 10 s (each
seen applied in /status) and an upgrade halfway (long: every 5 minutes), with RSS,
descriptors and pipes sampled every second: flat within each process (bounds a leak
of one pipe per 100 connections breaks), nothing lost, nothing left open."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

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


# Descriptors a process may gain from its first third to its last (medians): what a
# few connections in flight at a sampling moment hold. A leak of one pipe (2 descriptors)
# per 100 connections gains far more: the load runs hundreds of connections a second,
# and each process must have run enough of them for that (asserted below).
FD_SLACK = 16
PIPE_SLACK = 8  # pipe descriptors, the same way (pooled pipes follow the load's peak)
RSS_SLACK_KIB = 4096  # Python's allocator and the relay's pools settle in the first third


def pipe_fds(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:"):
                count += 1
    return count


def assert_flat(name: str, samples: list[int], slack: int, tally: Tally) -> None:
    """The last third of a process's samples is no higher than its first third
    (medians), allowing `slack` (absolute) for noise."""
    third = len(samples) // 3
    first, last = statistics.median(samples[:third]), statistics.median(samples[-third:])
    tally.note(f"{name}: median {first:.0f} in the first third, {last:.0f} in the last")
    assert last <= first + slack, f"{name} grew: {first} -> {last} ({samples})"


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
    samples: dict[int, list[tuple[int, int, int, int]]] = {}
    reloads = upgrades = 0
    started = time.monotonic()
    next_reload, next_upgrade = started + RELOAD_EVERY, started + upgrade_every
    try:
        while (now := time.monotonic()) < started + seconds:
            samples.setdefault(proxy.pid, []).append(
                (
                    rss_kib(proxy.pid),
                    len(os.listdir(f"/proc/{proxy.pid}/fd")),
                    pipe_fds(proxy.pid),
                    load.outcome["ok"],
                )
            )
            if now >= next_reload:
                proxy.write_config_unnoticed({**configs[(reloads + 1) % 2], **FULL})
                proxy.proc.send_signal(signal.SIGHUP)
                reloads += 1
                assert_applied(proxy, configs[reloads % 2])
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
        assert len(series) >= 9, f"process {number}: {len(series)} samples"
        third = len(series) // 3
        # Connections from the end of the first third to the start of the last: a leak
        # of one pipe per 100 of them must exceed the slack.
        between = series[-third][3] - series[third - 1][3]
        assert between // 100 * 2 > PIPE_SLACK, f"process {number}: only {between} connections"
        assert_flat(f"process {number} RSS KiB", [s[0] for s in series], RSS_SLACK_KIB, tally)
        assert_flat(f"process {number} pipe descriptors", [s[2] for s in series], PIPE_SLACK, tally)
        assert_flat(f"process {number} descriptors", [s[1] for s in series], FD_SLACK, tally)
    extra_listening = extra in configs[reloads % 2]["Apps"][0]["Ports"]
    assert_nothing_left_open(proxy, {**baseline, "sockets": baseline["sockets"] + extra_listening})
    # And no pipe beyond the pools: at most what the busiest moment held (sampled).
    assert pipe_fds(proxy.pid) <= max(s[2] for s in samples[proxy.pid]), samples[proxy.pid]
    tally.count(assert_serves(port), FAILED)
    assert proxy.stop() == 0


FULL = {"Steering": "ports", "Listen": "127.0.0.1", "Admin": "127.0.0.1:0"}


def assert_applied(proxy: Proxy, config: dict[str, Any], timeout: float = 10) -> None:
    """The reload took effect: /status shows the config's ports and target order."""
    app = config["Apps"][0]
    wanted = (sorted(app["Ports"]), app["Targets"])
    deadline = time.monotonic() + timeout
    while True:
        shown = proxy.status()["apps"][0]
        if (shown["ports"], [t["address"] for t in shown["targets"]]) == wanted:
            return
        assert time.monotonic() < deadline, f"reload not applied: {shown} (wanted {wanted})"
        time.sleep(0.05)
