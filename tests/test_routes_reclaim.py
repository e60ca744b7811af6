"""App ids and counter slots are handed out again once their apps and targets are
gone, so a proxy whose targets change on every deploy never hits a cap; and never
while a connection still counts into them."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastproxy import _relay
from fastproxy.backends import NamedEchoServer
from fastproxy.config import App, Config, HealthCheck, Target
from fastproxy.targets.health import HealthChecker
from fastproxy.targets.routing import Routes
from proxyproc import Proxy, app, free_ports
from servers import talk

RELOADS = 10_000
TARGETS = 14  # per app: 2 apps x 14 new slots x 10,000 reloads > the 262,144 slots there are


@pytest.fixture
def backends() -> Iterator[list[NamedEchoServer]]:
    servers = [NamedEchoServer(f"backend-{i}") for i in range(2)]
    yield servers
    for server in servers:
        server.close()


def config(apps: dict[str, tuple[int, list[tuple[str, int]]]]) -> Config:
    return Config(
        apps=tuple(
            App(name, (port,), tuple(Target(host, p) for host, p in targets))
            for name, (port, targets) in apps.items()
        )
    )


def addresses(cfg: Config) -> dict[str, tuple[int, str]]:
    return {t.host: (socket.AF_INET, t.host) for a in cfg.apps for t in a.targets}


def churned(n: int, port: int) -> list[tuple[str, int]]:
    """TARGETS addresses that no other reload uses."""
    return [(f"127.{(n >> 8) & 255}.{n & 255}.{i + 1}", port) for i in range(TARGETS)]


def started_relay() -> tuple[_relay.Relay, socket.socket, int]:
    """A running one-worker relay with a loopback listener: (relay, listener, port)."""
    relay = _relay.Relay(workers=1)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    relay.add_listener(listener.fileno(), port)
    relay.start()
    return relay, listener, port


def test_10000_reloads_replacing_every_target_hit_no_cap() -> None:
    relay = _relay.Relay(workers=1)
    relay.start()
    try:
        routes = Routes(relay)
        ports = free_ports(2)
        started = time.monotonic()
        kept_slot = None
        for n in range(RELOADS):
            # Every target address is new each time, and the second app's name every
            # tenth time (handing its id on waits for the workers: a quiesce).
            apps = {
                "kept": (ports[0], churned(n, 1)),
                f"renamed-{n // 10}": (ports[1], churned(n, 2)),
            }
            cfg = config(apps)
            routes.apply(cfg, addresses(cfg))
            kept_slot = kept_slot if kept_slot is not None else routes.apps["kept"].slot
            assert routes.apps["kept"].slot == kept_slot  # an app that stays keeps its counters
        elapsed = time.monotonic() - started
        print(
            f"{RELOADS} reloads in {elapsed:.1f} s; {routes.slots_allocated} slots, "
            f"{routes.app_ids_allocated} app ids ever allocated"
        )
        # What one config needs, plus what the last reload retired.
        assert routes.slots_allocated <= 2 * (2 + 2 * TARGETS)
        assert routes.app_ids_allocated <= 3
        assert sorted(routes.port_owner) == sorted(ports)
    finally:
        relay.stop()


def test_a_slot_is_reused_only_once_no_connection_counts_into_it(
    backends: list[NamedEchoServer],
) -> None:
    """A connection keeps counting into its target's slot after a reload dropped
    that target; the slot is zeroed and handed out again only once it has closed.
    The counters of an app and of a target that stay never go backwards."""
    relay, listener, port = started_relay()
    routes = Routes(relay)
    stable = ("127.0.0.1", backends[1].port)
    try:
        first = config({"web": (port, [("127.0.0.1", backends[0].port)])})
        routes.apply(first, addresses(first))
        held = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert held.recv(100) == b"backend-0\n"
        old_slot = routes.apps["web"].targets[0].slot
        app_slot = routes.apps["web"].slot
        history = []
        for n in range(50):
            cfg = config({"web": (port, [stable, *churned(n, 9)])})
            routes.apply(cfg, addresses(cfg))
            assert old_slot not in routes._slots.values(), (
                "a slot reused while a connection holds it"
            )
            assert routes.stats(old_slot)["active"] == 1
            stable_slot = routes.apps["web"].targets[0].slot
            history.append((routes.stats(app_slot), routes.stats(stable_slot)))
            if n % 10 == 0:  # traffic through the stable target between reloads
                assert talk(port, b"hi") == b"backend-1\nhi"
        held.sendall(b"still here")
        assert held.recv(100) == b"still here"
        held.close()
        deadline = time.monotonic() + 5
        while relay.connections() and time.monotonic() < deadline:
            time.sleep(0.01)
        cfg = config({"web": (port, [stable, *churned(1000, 9)])})
        routes.apply(cfg, addresses(cfg))
        # The oldest spare, free at last, is the first one handed on: zeroed.
        assert old_slot in routes._slots.values(), "the slot was never handed on"
        assert set(routes.stats(old_slot).values()) == {0}
        assert routes.slots_allocated <= 2 * (2 + TARGETS) + 1
        for (app_before, stable_before), (app_after, stable_after) in zip(history, history[1:]):
            for key in ("connections", "bytes_in", "bytes_out"):
                assert app_after[key] >= app_before[key]
                assert stable_after[key] >= stable_before[key]
    finally:
        relay.remove_listener(listener.fileno())
        listener.close()
        relay.stop()


def test_proxy_after_many_churning_reloads_routes_and_reports_right(
    tmp_path: Path, backends: list[NamedEchoServer]
) -> None:
    port, other = free_ports(2)
    quiet = {"Interval": 3600, "Timeout": 1}
    live = backends[0].address

    def apps(n: int) -> dict[str, object]:
        dead = [f"127.{n >> 8 & 255}.{n & 255}.{i + 1}:9" for i in range(8)]
        return {
            "Apps": [
                app("web", [port], [live, *dead], HealthCheck=quiet),
                app(f"renamed-{n}", [other], dead[:2], HealthCheck=quiet),
            ]
        }

    proxy = Proxy(tmp_path, apps(0))
    assert talk(port, b"before") == b"backend-0\nbefore"
    fds = proxy.fd_count()
    for n in range(1, 101):
        proxy.write_config(apps(n))
        proxy.proc.send_signal(signal.SIGHUP)
        wanted = [live] + [f"127.0.{n}.{i + 1}:9" for i in range(8)]
        deadline = time.monotonic() + 10
        while [t["address"] for t in proxy.status()["apps"][0]["targets"]] != wanted:
            assert time.monotonic() < deadline, proxy.log()[-2000:]
            time.sleep(0.005)
    for i in range(5):
        assert talk(port, b"after %d" % i) == b"backend-0\nafter %d" % i
    status = proxy.status()
    web, renamed = status["apps"]
    assert (web["name"], renamed["name"]) == ("web", "renamed-100")
    assert web["connections"] == 6 and web["active"] == 0  # the count before the reloads stays
    assert web["bytes_in"] == len(b"before") + sum(len(b"after %d" % i) for i in range(5))
    live_target = web["targets"][0]
    assert live_target["connections"] == 6 and live_target["bytes_in"] == web["bytes_in"]
    assert all(t["connections"] == 0 for t in web["targets"][1:])
    assert status["connections"] == 0
    assert proxy.fd_count() <= fds + 4
    assert proxy.stop() == 0


def test_a_reused_slot_starts_with_fresh_health_state() -> None:
    """The health checker keeps its state per counter slot: a target that gets the
    slot of one that went away must not inherit its verdict (a dead new target
    would then never be marked down)."""
    relay = _relay.Relay(workers=1)
    routes = Routes(relay)
    checker = HealthChecker(routes)
    fast = HealthCheck(interval=0.05, timeout=0.5, rise=1, fall=1)
    dead = free_ports(4)

    def apply(target_port: int) -> None:
        cfg = Config(
            apps=(App("web", (dead[0],), (Target("127.0.0.1", target_port),), health_check=fast),)
        )
        routes.apply(cfg, addresses(cfg))

    def wait_state(state: str) -> None:
        deadline = time.monotonic() + 5
        while routes.apps["web"].targets[0].state != state:
            assert time.monotonic() < deadline, f"never {state}"
            time.sleep(0.01)

    checker.start()
    try:
        apply(dead[1])
        wait_state("down")
        old_slot = routes.apps["web"].targets[0].slot
        apply(dead[2])  # the first target goes: its slot is retired ...
        apply(dead[3])  # ... and handed to the new target of this reload
        assert routes.apps["web"].targets[0].slot == old_slot
        assert routes.apps["web"].targets[0].state == "up"  # new: up until checks say otherwise
        wait_state("down")
    finally:
        checker.stop()


def test_a_target_that_returns_keeps_its_counters(backends: list[NamedEchoServer]) -> None:
    """A reload that drops a target, then one that brings it back (a rolled-back
    reload does just that): its slot, counters and health state come back whole."""
    relay, listener, port = started_relay()
    routes = Routes(relay)
    try:
        first = config({"web": (port, [("127.0.0.1", backends[0].port)])})
        second = config({"web": (port, [("127.0.0.1", backends[1].port)])})
        routes.apply(first, addresses(first))
        assert talk(port, b"one") == b"backend-0\none"
        target = routes.apps["web"].targets[0]
        routes.set_admin("web", target.target.address, "drain")
        before = routes.stats(target.slot)
        routes.apply(second, addresses(second))
        assert talk(port, b"two") == b"backend-1\ntwo"
        routes.apply(first, addresses(first))
        assert routes.apps["web"].targets[0] is target
        assert routes.stats(target.slot) == before and before["bytes_in"] == 3
        assert target.state == "draining"
    finally:
        relay.remove_listener(listener.fileno())
        listener.close()
        relay.stop()
