"""Targets that die: SIGKILL mid-stream, restarted, and flapping every 200 ms under
load. Streams through a surviving target arrive whole; streams through a killed one
end early with a reset (never a clean FIN: that would pass a cut stream off as whole)
and never carry a wrong byte; nothing stays open; new clients are served."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import VARIANTS, needs_root
from faultkit import (
    Load,
    Outcome,
    TargetProcess,
    assert_nothing_left_open,
    assert_serves,
    open_state,
    source_client,
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
    # Targets that send a stream on request; the doomed one paced at about 0.8 MB/s, so
    # its streams take seconds and the kill lands mid-stream; its death resets them.
    doomed, survivor = TargetProcess("paced"), TargetProcess("source")
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("kill", [port], [doomed.address, survivor.address])]})
    baseline = open_state(proxy)
    try:
        for _ in range(rounds):
            wait_until_up(proxy, doomed.address)  # round robin: half the streams go to it
            outcome, receiving = Outcome(), threading.Semaphore(0)
            clients = [
                threading.Thread(target=source_client, args=(port, size, outcome, receiving))
                for _ in range(streams)
            ]
            for c in clients:
                c.start()
            for _ in range(streams):  # every stream has had bytes back: all are flowing
                assert receiving.acquire(timeout=20), outcome
            in_flight = target_of(proxy, doomed.address)["active"]
            doomed.kill9()  # mid-stream: its clients are reset, the others go on
            time.sleep(0.3)
            doomed.start()
            for c in clients:
                c.join(120)
            tally.count(outcome, (*FAILED, "truncated"))
            assert outcome["corrupt"] == outcome["hang"] == outcome["refused"] == 0, outcome
            # Each stream of the killed target ended early with a reset, none with a FIN.
            assert outcome["truncated"] == 0, f"a cut stream ended with a clean FIN: {outcome}"
            assert in_flight >= 1 and outcome["cut"] == in_flight, (in_flight, outcome)
            assert outcome["ok"] == streams - in_flight, f"a survivor's stream was lost: {outcome}"
        tally.note(
            f"{rounds} kills of one of two targets (the killed one paced at ~0.8 MB/s),"
            f" {streams} streams of {size >> 20} MiB each: the killed target's streams reset"
            " mid-way, the others whole"
        )
        assert_nothing_left_open(proxy, baseline)
        wait_until_up(proxy, doomed.address)
        served, receiving = Outcome(), threading.Semaphore(0)
        for _ in range(4):  # new clients, through both targets, get whole streams
            source_client(port, 200_000, served, receiving)
        tally.count(served, (*FAILED, "cut", "truncated"))
        assert served["ok"] == 4, served
        assert proxy.stop() == 0
    finally:
        doomed.close()
        survivor.close()


def target_of(proxy: Proxy, address: str) -> dict[str, Any]:
    return next(t for a in proxy.status()["apps"] for t in a["targets"] if t["address"] == address)


def wait_until_up(proxy: Proxy, address: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while target_of(proxy, address)["state"] != "up":
        assert time.monotonic() < deadline, f"{address} did not come back up"
        time.sleep(0.1)


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
