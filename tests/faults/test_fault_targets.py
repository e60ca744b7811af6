"""Targets that die: SIGKILL mid-stream, restarted, and flapping every 200 ms under
load. Streams through a surviving target arrive whole; streams through a killed one
end early but never carry a wrong byte; nothing stays open; new clients are served."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from conftest import VARIANTS, needs_root
from faultkit import (
    Load,
    Outcome,
    TargetProcess,
    assert_nothing_left_open,
    assert_serves,
    echo_client,
    open_state,
)
from faultnet import namespace
from proxyproc import Proxy, app, free_ports
from records import Tally

FAILED = ("corrupt", "hang", "refused")


@pytest.mark.parametrize("variant", VARIANTS)
def test_targets_killed_mid_stream_and_restarted(
    tmp_path: Path, tally: Tally, variant: str
) -> None:
    rounds, streams, size = {"short": (3, 6, 8 << 20), "long": (30, 16, 64 << 20)}[variant]
    doomed, survivor = TargetProcess("echo"), TargetProcess("echo")
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("kill", [port], [doomed.address, survivor.address])]})
    baseline = open_state(proxy)
    try:
        for _ in range(rounds):
            outcome = Outcome()
            clients = [
                threading.Thread(target=echo_client, args=(port, size, outcome))
                for _ in range(streams)
            ]
            for c in clients:
                c.start()
            time.sleep(0.5)
            doomed.kill9()  # mid-stream: its clients are cut, the others go on
            time.sleep(0.3)
            doomed.start()
            for c in clients:
                c.join(120)
            tally.count(outcome, FAILED)
            assert outcome["corrupt"] == outcome["hang"] == outcome["refused"] == 0, outcome
            assert outcome["ok"] >= 1, f"no stream went through the survivor: {outcome}"
        tally.note(
            f"{rounds} kills of one of two echo targets, {streams} streams of {size >> 20} MiB each"
        )
        assert_nothing_left_open(proxy, baseline)
        tally.count(assert_serves(port), FAILED)
        assert proxy.stop() == 0
    finally:
        doomed.close()
        survivor.close()


@needs_root
@pytest.mark.parametrize("variant", VARIANTS)
def test_target_flapping_every_200ms_under_load(tmp_path: Path, tally: Tally, variant: str) -> None:
    # Its own netns: thousands of client ports, none reused from other tests' churn.
    with namespace() as ns:
        flapping(tmp_path, tally, variant, ns)


def flapping(tmp_path: Path, tally: Tally, variant: str, ns: str) -> None:
    seconds = {"short": 6, "long": 120}[variant]
    flapper, steady = TargetProcess("echo"), TargetProcess("echo")
    (port,) = free_ports(1)
    proxy = Proxy(
        tmp_path,
        {
            "Apps": [
                app(
                    "flap",
                    [port],
                    [flapper.address, steady.address],
                    HealthCheck={"Interval": 0.2, "Timeout": 0.5, "Rise": 1, "Fall": 1},
                )
            ]
        },
    )
    baseline = open_state(proxy)
    try:
        load = Load(port, threads=4, sizes=(1, 256 << 10), ns=ns)
        deadline = time.monotonic() + seconds
        flaps = 0
        while time.monotonic() < deadline:
            time.sleep(0.1)
            flapper.kill9()
            time.sleep(0.1)
            flapper.start()
            flaps += 1
        outcome = load.stop()
        tally.count(outcome, FAILED)
        tally.note(f"{flaps} kill/restart cycles of one of two targets; {dict(outcome)}")
        assert outcome["corrupt"] == outcome["hang"] == outcome["refused"] == 0, (
            outcome,
            outcome.errors[:5],
        )
        assert outcome["ok"] > 100, f"the load did not run: {outcome}"
        # While the other target was up, no client was turned away for want of one.
        assert proxy.status()["apps"][0]["no_target"] == 0
        assert_nothing_left_open(proxy, baseline)
        tally.count(assert_serves(port), FAILED)
        assert proxy.stop() == 0
    finally:
        flapper.close()
        steady.close()
