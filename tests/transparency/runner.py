"""Run scenarios over a path: direct (the client connects to the target's listener) or
through a running `fastproxy serve` with one app per target listener."""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from pathlib import Path

from proxyproc import Proxy, app, free_ports
from transparency.endpoint import End, Obs
from transparency.scenario import Scenario

TIMEOUT = 20.0  # one scenario, both ends: direct takes at most a few seconds
SLOW_RCVBUF = 4096
NO_HEALTH_CHECKS = {"Interval": 30 * 86400}  # a probe would take a scenario's accept

Pair = tuple[Obs, Obs]  # (client, target)


def _listener(rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:  # accepted sockets inherit it, before the handshake sets the window
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.settimeout(10)
    return sock


class Direct:
    """A way from a client to the target listeners: `entry[slow]` is where a client
    connects for a target that reads fast (False) or slowly (True)."""

    name = "direct"

    def __init__(self) -> None:
        self.listeners = {False: _listener(), True: _listener(SLOW_RCVBUF)}
        self.entry = {slow: ls.getsockname() for slow, ls in self.listeners.items()}

    def close(self) -> None:
        for ls in self.listeners.values():
            ls.close()


class Proxied(Direct):
    """`fastproxy serve` in front of the listeners: one app per listener."""

    def __init__(self, tmp: Path, relay: str, steering: str) -> None:
        super().__init__()
        self.name = f"{relay}/{steering}"
        ports = free_ports(2)
        apps = [
            app(
                f"slow{int(slow)}",
                [port],
                [f"127.0.0.1:{ls.getsockname()[1]}"],
                HealthCheck=NO_HEALTH_CHECKS,
            )
            for port, (slow, ls) in zip(ports, self.listeners.items())
        ]
        config = {"Relay": relay, "Steering": steering, "Apps": apps}
        if steering == "bpf":
            config["Listen"] = "::"
        # bpf: the session's first start compiles with bcc (13.6 s seen on a busy machine).
        self.proxy = Proxy(tmp, config, start_timeout=60)
        self.entry = {slow: ("127.0.0.1", port) for slow, port in zip(self.listeners, ports)}

    def close(self) -> None:
        self.proxy.kill()
        super().close()


_pairing = threading.Lock()  # one connect and its accept at a time: so they pair up


def _connect(path: Direct, scenario: Scenario) -> tuple[socket.socket, socket.socket]:
    slow = scenario.target.reader == "slow"
    client = socket.socket()
    if scenario.client.reader == "slow":
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    client.settimeout(10)
    with _pairing:
        client.connect(path.entry[slow])
        target, _ = path.listeners[slow].accept()
    return client, target


def run(jobs: Sequence[tuple[Direct, Scenario]]) -> list[Pair]:
    """Run every (path, scenario) at once; what the client and the target observed."""
    ends = []
    for path, scenario in jobs:
        client, target = _connect(path, scenario)
        ends.append(
            (
                End("client", client, scenario.client, TIMEOUT),
                End("target", target, scenario.target, TIMEOUT),
            )
        )
    for pair in ends:
        for end in pair:
            end.start()
    for pair in ends:
        for end in pair:
            end.join()
    return [(c.obs, t.obs) for c, t in ends]
