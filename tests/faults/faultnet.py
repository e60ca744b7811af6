"""Network faults made by the kernel, inside namespaces the tests create: dropped
SYNs and random packet loss (nftables), and, where the kernel has sch_netem, delay.

Nothing here touches the root namespace: every rule lives in a namespace that is
deleted with it."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
from collections.abc import Iterator

from fastproxy import netns

PREFIX = "fp-faults"
_counter = itertools.count()


def run_in(ns: str, *argv: str, stdin: str | None = None) -> None:
    subprocess.run(
        netns.nsenter_argv(ns, *argv), input=stdin, text=True, check=True, capture_output=True
    )


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    """A fresh netns (lo up), entered by this thread for the body; its name."""
    with netns.temporary(PREFIX) as name:
        yield name


@contextlib.contextmanager
def entered(ns: str | None) -> Iterator[None]:
    """Enter `ns` on this thread (threads start in the root namespace); None: stay."""
    if ns is None:
        yield
        return
    with netns.entered(netns.path(ns)):
        yield


def nft(ns: str, ruleset: str) -> None:
    run_in(ns, "nft", "-f", "-", stdin=ruleset)


def drop_syns(ns: str, port: int) -> None:
    """Blackhole: SYNs to `port` vanish, so a connect neither succeeds nor is refused."""
    nft(
        ns,
        "table inet fpfaults_syn {\n chain out { type filter hook output priority 0;"
        f" tcp dport {port} tcp flags & (syn | ack) == syn drop\n }}\n}}\n",
    )


def local_port_range(ns: str, low: int, high: int) -> None:
    run_in(ns, "sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={low} {high}")


class Link:
    """Two namespaces joined by a veth pair: the proxy and its clients in `near`
    (entered by the calling thread), the targets in `far`, reached at FAR_ADDR."""

    NEAR_ADDR = "10.213.0.1"
    FAR_ADDR = "10.213.0.2"

    def __init__(self, near: str) -> None:
        self.near = near
        self.far = f"{PREFIX}-{os.getpid()}-far{next(_counter)}"
        netns.create(self.far)
        try:
            run_in(near, "ip", "link", "add", "fpf0", "type", "veth", "peer", "name", "fpf1")
            run_in(near, "ip", "link", "set", "fpf1", "netns", netns.path(self.far))
            run_in(near, "ip", "addr", "add", f"{self.NEAR_ADDR}/30", "dev", "fpf0")
            run_in(self.far, "ip", "addr", "add", f"{self.FAR_ADDR}/30", "dev", "fpf1")
            run_in(near, "ip", "link", "set", "fpf0", "up")
            run_in(self.far, "ip", "link", "set", "fpf1", "up")
        except BaseException:
            netns.delete(self.far)
            raise

    def impair(self, loss_percent: int, delay_ms: int, jitter_ms: int) -> str:
        """Loss and delay on both directions of the link; returns what was applied.
        Delay needs sch_netem, which some kernels lack: then loss alone (nftables)."""
        try:
            for ns, dev in ((self.near, "fpf0"), (self.far, "fpf1")):
                run_in(
                    ns,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "netem",
                    "loss",
                    f"{loss_percent}%",
                    "delay",
                    f"{delay_ms}ms",
                    f"{jitter_ms}ms",
                )
            return f"netem: {loss_percent}% loss, {delay_ms} ms ± {jitter_ms} ms each way"
        except subprocess.CalledProcessError:
            for ns, dev in ((self.near, "fpf0"), (self.far, "fpf1")):
                nft(
                    ns,
                    "table inet fpfaults_loss {\n chain out { type filter hook output priority 0;"
                    f' oifname "{dev}" numgen random mod 100 < {loss_percent}'
                    " counter drop\n }\n}\n",
                )
            return (
                f"nftables: {loss_percent}% loss each way; no delay (this kernel has no sch_netem)"
            )

    def dropped(self) -> int:
        """Packets dropped by the nftables loss rules so far (0 with netem)."""
        total = 0
        for ns in (self.near, self.far):
            out = subprocess.run(
                netns.nsenter_argv(ns, "nft", "list", "ruleset"), capture_output=True, text=True
            ).stdout
            total += sum(int(n) for n in re.findall(r"counter packets (\d+)", out))
        return total

    def close(self) -> None:
        netns.delete(self.far)
