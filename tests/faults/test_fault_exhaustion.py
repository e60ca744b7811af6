"""Exhaustion: descriptors (the proxy under a small RLIMIT_NOFILE, via prlimit) and
ephemeral ports toward one target (a narrow ip_local_port_range, inside a netns of
the test's own). The proxy survives, recovers, and loses nothing it accepted: every
client it served before running out is still served, byte for byte, afterwards."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from conftest import needs_root
from faultkit import (
    Load,
    Outcome,
    TargetProcess,
    assert_nothing_left_open,
    assert_serves,
    echo_client,
    open_state,
)
from faultnet import local_port_range, namespace
from proxyproc import Proxy, app, free_ports
from records import Tally

NOFILE = 96


@needs_root
def test_descriptor_exhaustion_and_recovery(tmp_path: Path, tally: Tally) -> None:
    with namespace() as ns:  # its own ephemeral ports: the load may run through many
        descriptor_exhaustion(tmp_path, tally, ns)


def descriptor_exhaustion(tmp_path: Path, tally: Tally, ns: str) -> None:
    target = TargetProcess("echo")
    (port,) = free_ports(1)
    proxy = Proxy(
        tmp_path,
        {"Apps": [app("fd", [port], [target.address])], "Workers": 1},
        prefix=["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--"],
    )
    baseline = open_state(proxy)
    try:
        # Far more open connections than descriptors: the proxy runs out.
        held = []
        for _ in range(NOFILE):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(b"hold")
            except OSError:
                continue  # turned away: the proxy is out of descriptors
            held.append(sock)
        # Each held client was either served (its 4 bytes echoed) or turned away at
        # once (closed or reset, nothing received): none is left waiting.
        served = [sock for sock in held if read_back(sock, b"hold")]
        assert served, "no held client was served"
        load = Load(port, threads=4, sizes=(1, 16 << 10), ns=ns)
        time.sleep(3)
        outcome = load.stop()
        exhausted = len(os.listdir(f"/proc/{proxy.pid}/fd"))
        assert proxy.proc.poll() is None, "the proxy died of descriptor exhaustion"
        # Every client it served is still served after the exhaustion, whole.
        intact = 0
        for sock in served:
            payload = os.urandom(64 << 10)
            with contextlib.suppress(ConnectionResetError):  # reset: lost, counted below
                sock.sendall(payload)
                intact += read_back(sock, payload)
        for sock in held:
            sock.close()
        tally.connections += NOFILE
        tally.count(outcome, ("corrupt", "hang"))
        tally.note(
            f"RLIMIT_NOFILE {NOFILE}: {len(served)} of {NOFILE} held clients served,"
            f" {intact} of them read back whole after the exhaustion;"
            f" {exhausted} descriptors in use; load while exhausted: {dict(outcome)}"
        )
        assert intact == len(served), f"{len(served) - intact} served clients were lost"
        # Clients the proxy had no descriptor for were turned away (reset, or closed
        # early): never given a wrong byte, never left hanging.
        assert outcome["corrupt"] == outcome["hang"] == 0, outcome
        assert_nothing_left_open(proxy, baseline)
        tally.count(assert_serves(port), ("corrupt", "hang", "refused", "cut"))
        assert proxy.stop() == 0
    finally:
        target.close()


def read_back(sock: socket.socket, expected: bytes) -> bool:
    """True when `expected` comes back whole; False when the proxy closed or reset
    the client first. Anything else (wrong bytes, a wait) fails the test."""
    sock.settimeout(10)
    data = b""
    try:
        while len(data) < len(expected) and (chunk := sock.recv(len(expected) - len(data))):
            data += chunk
    except ConnectionResetError:
        pass
    assert expected.startswith(data), "a held client got wrong bytes"
    return data == expected


PORTS = 64  # ephemeral ports in the test netns, outside the default range


@needs_root
def test_ephemeral_ports_exhausted_toward_one_target(tmp_path: Path, tally: Tally) -> None:
    with namespace() as ns:
        crowded, spare = TargetProcess("echo"), TargetProcess("echo")
        # One main port per client: with so few ephemeral ports, a client port comes
        # back while the proxy's side of the last connection on it is in TIME_WAIT.
        ports = free_ports(28)
        hogs, mains = ports[:8], ports[8:]
        quiet = {"Interval": 60, "Timeout": 1, "Rise": 1, "Fall": 3}  # no active checks
        proxy = Proxy(
            tmp_path,
            {
                "Apps": [
                    app("hog", hogs, [crowded.address], HealthCheck=quiet),
                    app("main", mains, [crowded.address, spare.address], HealthCheck=quiet),
                ]
            },
        )
        baseline = open_state(proxy)
        # Every port is its own destination: each client, and the proxy toward each
        # target, has PORTS ephemeral ports (connect() may use only half of them).
        local_port_range(ns, 61000, 61000 + PORTS - 1)
        try:
            # The hog's connections take every ephemeral port toward `crowded`.
            held = []
            for i in range(2 * PORTS):
                try:
                    sock = socket.create_connection(("127.0.0.1", hogs[i % len(hogs)]), timeout=5)
                    sock.sendall(b"hold")
                except OSError:
                    continue  # turned away once the ports were gone: the point
                held.append(sock)
            time.sleep(0.5)
            # EADDRNOTAVAIL is per destination: counted against the target, not as local.
            hog = proxy.status()["apps"][0]
            assert hog["targets"][0]["connect_failures"] > 0, "ports were not exhausted"
            # The other app's clients must all reach `spare` (a port toward it is free).
            outcome = Outcome()
            for i in range(20):
                echo_client(mains[i % len(mains)], 4096, outcome)
            tally.count(outcome, ("corrupt", "hang", "refused", "cut"))
            tally.note(
                f"{len(held)} connections toward one target exhaust its {PORTS} ports;"
                f" the other app's clients: {dict(outcome)}"
            )
            for sock in held:
                sock.close()
            assert outcome["ok"] == 20, outcome
            assert_nothing_left_open(proxy, baseline)
            tally.count(assert_serves(mains[0], clients=2), ("corrupt", "hang", "refused", "cut"))
            assert proxy.stop() == 0
        finally:
            crowded.close()
            spare.close()
