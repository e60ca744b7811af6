"""SlowStart (issue 23): a target that comes up takes a growing share of the clients,
in every balancing mode, starting again at each transition to up."""

from __future__ import annotations

import random
import time
from pathlib import Path

from fastproxy.backends import NamedEchoServer
from proxyproc import Proxy, app, free_ports
from servers import talk

MODES = ("round-robin", "least-conn", "random", "source-hash", "maglev")
RAMP = 4.0


def ask(port: int, source: str) -> str:
    return talk(port, b"x", source=source).partition(b"\n")[0].decode()


def shares(ports: list[int], seconds: float, at_least: int = 0) -> list[float]:
    """Per app, the share of clients that target b took over the next `seconds` (and
    `at_least` clients: a slow machine's few would make a fair share a coin toss);
    clients from many addresses (source-hash, seeded), the apps interleaved."""
    seen = [[0, 0] for _ in ports]
    end = time.monotonic() + seconds
    sources = random.Random(23)
    while time.monotonic() < end or sum(seen[0]) < at_least:
        source = f"127.0.{sources.randrange(1, 250)}.{sources.randrange(1, 250)}"
        for i, port in enumerate(ports):
            seen[i][ask(port, source) == "b"] += 1
    return [b / (a + b) for a, b in seen]


def test_slow_start_ramps_a_target_that_comes_up(tmp_path: Path) -> None:
    a, b = NamedEchoServer("a"), NamedEchoServer("b")
    try:
        ports = free_ports(len(MODES))
        targets = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
        config = {
            "Workers": 2,
            "Apps": [app(m, [p], targets, Balance=m, SlowStart=RAMP) for m, p in zip(MODES, ports)],
        }
        proxy = Proxy(tmp_path, config)
        # Up from the start: no ramp, b takes its half at once.
        settled = shares(ports, 1.0, at_least=200)
        for mode in MODES:
            assert proxy.http("POST", f"/targets/{mode}/{targets[1]}/disable")[0] == 200
        for mode in MODES:
            assert proxy.http("POST", f"/targets/{mode}/{targets[1]}/enable")[0] == 200
        early = shares(ports, 1.0)  # its share is 10 % .. 25 % of normal
        time.sleep(RAMP - 1.0)
        late = shares(ports, 1.0, at_least=200)
        print("b's share: settled", [f"{s:.2f}" for s in settled])
        print("b's share: first second after up", [f"{s:.2f}" for s in early])
        print(f"b's share: after {RAMP:g} s", [f"{s:.2f}" for s in late])
        for mode, before, ramping, after in zip(MODES, settled, early, late):
            assert before > 0.3, (mode, before)
            assert ramping < 0.25, (mode, ramping)
            assert after > 0.3, (mode, after)
        assert proxy.stop() == 0
    finally:
        a.close()
        b.close()
