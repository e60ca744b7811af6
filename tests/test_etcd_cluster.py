"""Three fastproxy instances, each in its own network namespace serving the same ports,
one etcd reachable from all (SPEC section 8): 20 config changes reach every instance
under load, etcd dies and comes back, an instance killed with -9 leaves the cluster
within its lease TTL, and no client of a port that every revision keeps ever fails."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from etcdproc import Fleet, have_etcd
from fastproxy.backends import NamedEchoServer
from proxyproc import app
from servers import talk

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not have_etcd(), reason="etcd-server not installed"),
]

BACKENDS = {"a": 7101, "b": 7102, "c": 7103}  # in every instance's namespace
STEADY = 8000  # a port every revision keeps: its clients must never fail
LEASE_TTL = 3


def revision_config(k: int) -> dict[str, Any]:
    """Revision k: the steady app's target moves, one port comes and one goes."""
    names = sorted(BACKENDS)
    return {
        "Apps": [
            app("steady", [STEADY], [f"127.0.0.1:{BACKENDS[names[k % 3]]}"]),
            app("moving", [8100 + k], [f"127.0.0.1:{BACKENDS[names[(k + 1) % 3]]}"]),
        ],
    }


def expected(k: int) -> tuple[int, str]:
    """The port revision k adds, and the backend that must answer it."""
    return 8100 + k, sorted(BACKENDS)[(k + 1) % 3]


def ask(port: int) -> str:
    return talk(port, b"hi").partition(b"\n")[0].decode()


class Load:
    """One client at a time on the steady port of every instance, until stopped."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.ok = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True)
            for i in range(len(fleet.members))
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, i: int) -> None:
        with self.fleet.inside(i):
            deadline = time.monotonic() + 120  # bounded whatever happens to the test
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    assert talk(STEADY, b"steady").endswith(b"\nsteady")
                    self.ok += 1
                except (OSError, AssertionError) as exc:
                    self.failed.append(f"instance {i}: {exc!r}")
                self.stop.wait(0.02)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


def serving_everywhere(fleet: Fleet, k: int, timeout: float = 15) -> float:
    """Seconds until every instance answers revision k's new port with its backend."""
    port, name = expected(k)
    started = time.monotonic()
    pending = set(range(len(fleet.members)))
    while pending:
        for i in list(pending):
            with fleet.inside(i):
                try:
                    if ask(port) == name:
                        pending.discard(i)
                except OSError:
                    pass
        assert time.monotonic() - started < timeout, f"revision {k} not on {pending}"
        time.sleep(0.005)
    return time.monotonic() - started


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with Fleet(tmp_path, 3) as running:
        backends = []
        for i in range(3):
            with running.inside(i):
                backends += [NamedEchoServer(n, port=p) for n, p in BACKENDS.items()]
        try:
            yield running
        finally:
            for backend in backends:
                backend.close()


def test_fleet_follows_etcd_through_faults(fleet: Fleet) -> None:
    fleet.push(revision_config(0))
    proxies = fleet.start("--lease-ttl", str(LEASE_TTL))
    load = Load(fleet)
    try:
        delays = []
        for k in range(1, 21):
            revision = fleet.push(revision_config(k))
            delays.append(serving_everywhere(fleet, k))
            # the port of the revision before is gone
            with fleet.inside(0), pytest.raises(OSError):
                ask(expected(k - 1)[0])
        print(f"push to all 3 serving: p50 {statistics.median(delays) * 1000:.0f} ms, "
              f"max {max(delays) * 1000:.0f} ms")  # fmt: skip
        deadline = time.monotonic() + 10
        while {r["config_revision"] for r in fleet.instances().values()} != {revision}:
            assert time.monotonic() < deadline, fleet.instances()
            time.sleep(0.1)

        # etcd dies: every instance keeps serving; it comes back: a push reaches all
        fleet.etcd.kill()
        time.sleep(1)
        for i in range(3):
            with fleet.inside(i):
                assert ask(expected(20)[0]) == expected(20)[1]
        with fleet.in_hub():
            fleet.etcd.start()
        fleet.push(revision_config(21))
        serving_everywhere(fleet, 21, timeout=20)
    finally:
        load.finish()
    assert load.failed == [] and load.ok > 100, (load.ok, load.failed[:5])

    # kill -9 one instance: it leaves the cluster within its lease TTL
    proxies[2].kill()
    killed = time.monotonic()
    while fleet.members[2] in fleet.instances():
        assert time.monotonic() - killed < LEASE_TTL + 3, "still registered"
        time.sleep(0.1)
    left = fleet.instances()
    assert sorted(left) == sorted(fleet.members[:2])
    assert not any(record["lags"] for record in left.values())
    for i, proxy in enumerate(proxies[:2]):
        with fleet.inside(i):
            assert proxy.status()["reloads"]["failure"] == 0
            assert proxy.stop() == 0
