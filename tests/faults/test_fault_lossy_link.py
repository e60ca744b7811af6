"""A lossy (and, where the kernel has sch_netem, slow) link between the proxy and
its targets: a veth pair between two namespaces, 5% loss each way, 20 ms ± 10 ms
delay. Streams in both directions arrive intact."""

from __future__ import annotations

import hashlib
import socket
import threading
from pathlib import Path

import pytest

from conftest import VARIANTS, needs_root
from faultkit import Outcome, TargetProcess, assert_nothing_left_open, assert_serves, open_state
from faultnet import Link, entered, namespace
from pattern import PrefixCheck, pattern_chunks
from proxyproc import Proxy, app, free_ports
from records import Tally

# (streams each way, bytes per stream): 64 MiB in all short, 2 GiB long.
SIZES = {"short": (4, 8 << 20), "long": (8, 128 << 20)}


def upload(port: int, seed: int, size: int, outcome: Outcome, ns: str) -> None:
    """Send a stream to the sink target; it answers the sha256 of what it got."""
    expected = hashlib.sha256()
    with entered(ns), socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        for chunk in pattern_chunks(seed, 0, size):
            sock.sendall(chunk)
            expected.update(chunk)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while data := sock.recv(256):
            answer += data
    ok = answer == f"{expected.hexdigest()} {size}\n".encode()
    outcome.add("ok" if ok else "corrupt", size if ok else 0)


def download(port: int, seed: int, size: int, outcome: Outcome, ns: str) -> None:
    """Ask the source target for a stream and check every byte."""
    check = PrefixCheck(seed)
    with entered(ns), socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(f"{size} {seed}\n".encode())
        while data := sock.recv(1 << 18):
            check.feed(data)
    ok = check.intact() and check.received == size
    outcome.add("ok" if ok else "corrupt", size if ok else 0)


@needs_root
@pytest.mark.parametrize("variant", VARIANTS)
def test_streams_intact_over_a_lossy_link(tmp_path: Path, tally: Tally, variant: str) -> None:
    streams, size = SIZES[variant]
    with namespace() as near:
        link = Link(near)
        try:
            far = link.far
            sink = TargetProcess("sink", host=Link.FAR_ADDR, ns=far)
            source = TargetProcess("source", host=Link.FAR_ADDR, ns=far)
            echo = TargetProcess("echo", host=Link.FAR_ADDR, ns=far)
            applied = link.impair(loss_percent=5, delay_ms=20, jitter_ms=10)
            up, down, back = free_ports(3)
            proxy = Proxy(
                tmp_path,
                {
                    "Apps": [
                        app("up", [up], [sink.address]),
                        app("down", [down], [source.address]),
                        app("echo", [back], [echo.address]),
                    ]
                },
            )
            baseline = open_state(proxy)
            outcome = Outcome()
            clients = [
                threading.Thread(target=job, args=(port, seed, size, outcome, near))
                for seed in range(streams)
                for job, port in ((upload, up), (download, down))
            ]
            for c in clients:
                c.start()
            for c in clients:
                c.join(3000)
            tally.count(outcome, ("corrupt", "hang", "refused", "cut"))
            tally.note(
                f"{applied}; {link.dropped()} packets dropped;"
                f" {2 * streams} streams of {size >> 20} MiB: {dict(outcome)}"
            )
            assert outcome["ok"] == 2 * streams, outcome
            assert_nothing_left_open(proxy, baseline)
            tally.count(assert_serves(back, clients=2), ("corrupt", "hang", "refused", "cut"))
            assert proxy.stop() == 0
        finally:
            link.close()
