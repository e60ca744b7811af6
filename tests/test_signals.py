"""Signals at any rate and at any moment never hang the proxy (SPEC §10), and a main
loop that stops turning is seen from outside."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from fastproxy.backends import NamedEchoServer
from proxyproc import Proxy, app, free_ports
from signalflood import flood_then_check


def test_a_flood_of_sighup_and_sigusr1_never_hangs_the_main_loop(tmp_path: Path) -> None:
    flood_then_check(tmp_path, signals=4000, seed=int.from_bytes(os.urandom(4), "big"))


def test_a_stuck_main_loop_turns_healthz_to_503_and_logs_its_stack(tmp_path: Path) -> None:
    """A main loop that stops turning (here a failpoint that blocks it) must be seen:
    /healthz answers 503 naming it, and the stuck stack is logged."""
    backend = NamedEchoServer("b")
    (port,) = free_ports(1)
    proxy = Proxy(
        tmp_path,
        {"Apps": [app("a", [port], [backend.address])]},
        env={"FASTPROXY_FAILPOINTS": "main.loop=pause"},
    )
    started = time.monotonic()
    assert proxy.http("GET", "/healthz")[0] == 200  # stuck, but not for long yet
    while (answer := proxy.http("GET", "/healthz"))[0] == 200:
        assert time.monotonic() - started < 15, "/healthz never noticed the stuck main loop"
        time.sleep(0.1)
    code, body = answer
    assert code == 503 and b"main loop stuck" in body, answer
    assert 4.5 < time.monotonic() - started < 10  # STALL_AFTER is 5 s
    deadline = time.monotonic() + 5
    while "main loop stuck" not in proxy.log():
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.1)
    stack = proxy.log().split("main loop stuck", 1)[1]
    assert "in failpoint" in stack and "process.py" in stack, stack  # where it is stuck
    # The relay goes on carrying traffic all the while.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        assert sock.recv(100) == b"b\n"
    proxy.kill()
