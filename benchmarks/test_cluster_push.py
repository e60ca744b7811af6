"""How fast a config pushed to etcd is served by a whole fleet (issue 13, SPEC section
8): 3 fastproxy instances, each in its own network namespace, one etcd. Each round
pushes 20 revisions (a port added, one removed, targets moved); a push's figure is the
time from the write being committed in etcd (the call `fastproxy config push` makes,
without the CLI's start-up) until every instance answers the port that revision adds
with the backend it names. Target: p50 < 200 ms, max < 1 s."""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import pytest

from bench_config import SMOKE
from bench_series import run_series

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from etcdproc import Fleet, client, have_etcd  # noqa: E402
from fastproxy.backends import NamedEchoServer  # noqa: E402
from proxyproc import app  # noqa: E402
from servers import talk  # noqa: E402

PUSHES = 3 if SMOKE else 20
INSTANCES = 3
BACKENDS = {"a": 7101, "b": 7102, "c": 7103}  # in every instance's namespace


def _config(k: int) -> dict:
    names = sorted(BACKENDS)
    return {
        "Apps": [
            app("steady", [8000], [f"127.0.0.1:{BACKENDS[names[k % 3]]}"]),
            app("moving", [8100 + k % 1000], [f"127.0.0.1:{BACKENDS[names[(k + 1) % 3]]}"]),
        ],
    }


def _until_served(fleet: Fleet, k: int, started: float) -> float:
    port, name = 8100 + k % 1000, sorted(BACKENDS)[(k + 1) % 3]
    pending = set(range(INSTANCES))
    while pending:
        for i in list(pending):
            with fleet.inside(i):
                try:
                    if talk(port, b"hi").startswith(name.encode() + b"\n"):
                        pending.discard(i)
                except OSError:
                    pass
        assert time.monotonic() - started < 30, f"revision {k} never reached {pending}"
        time.sleep(0.002)
    return time.monotonic() - started


@pytest.mark.skipif(os.geteuid() != 0 or not have_etcd(), reason="needs root and etcd-server")
def test_push_to_fleet(request, tmp_path: Path) -> None:
    revisions = itertools.count(1)
    with Fleet(tmp_path, INSTANCES, tag="fp-etcd-bench") as fleet:
        backends = []
        for i in range(INSTANCES):
            with fleet.inside(i):
                backends += [NamedEchoServer(n, port=p) for n, p in BACKENDS.items()]
        try:
            fleet.push(_config(0))
            fleet.start()

            def measure(name: str) -> tuple[dict[str, float], str]:
                delays = []
                for _ in range(PUSHES):
                    k = next(revisions)
                    with fleet.in_hub():
                        etcd = client(fleet.url)
                        etcd.put_if(etcd.url.config_key, json.dumps(_config(k)).encode(), None)
                        started = time.monotonic()  # the write is committed
                    delays.append(_until_served(fleet, k, started) * 1e3)
                figures = {"push_p50_ms": statistics.median(delays), "push_max_ms": max(delays)}
                return figures, json.dumps({"push_to_all_ms": delays})

            info = {"instances": INSTANCES, "pushes per round": PUSHES}
            run_series(request, "cluster-push", ["fastproxy-etcd"], measure, info=info)
        finally:
            for backend in backends:
                backend.close()
