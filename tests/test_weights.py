"""Weighted and backup targets (SPEC section 9), with real backends answering
with their names, so every assertion is about which backend took a connection."""

from __future__ import annotations

import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fastproxy.backends import NamedEchoServer
from proxyproc import Proxy, app, free_ports
from servers import talk

CHECK = {"Interval": 0.1, "Timeout": 0.2, "Rise": 2, "Fall": 2}


def ask(port: int, source: str | None = None) -> str:
    name, _, echo = talk(port, b"ping", source=source).partition(b"\n")
    assert echo == b"ping"
    return name.decode()


def hold(port: int) -> tuple[socket.socket, str]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    line = b""
    while not line.endswith(b"\n"):
        line += sock.recv(1)
    return sock, line.decode().strip()


def weighted(server: NamedEchoServer, weight: int = 1, backup: bool = False) -> dict[str, object]:
    return {"Address": f"127.0.0.1:{server.port}", "Weight": weight, "Backup": backup}


def swrr(weights: list[int], count: int) -> list[int]:
    """nginx's smooth weighted round robin, the reference the relay must follow."""
    current = [0] * len(weights)
    picks = []
    for _ in range(count):
        current = [c + w for c, w in zip(current, weights)]
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= sum(weights)
        picks.append(best)
    return picks


def wait_state(proxy: Proxy, app_name: str, states: dict[str, str], limit: float = 5) -> None:
    deadline = time.monotonic() + limit
    while True:
        (entry,) = [a for a in proxy.status()["apps"] if a["name"] == app_name]
        seen = {t["address"]: t["state"] for t in entry["targets"]}
        if all(seen[address] == state for address, state in states.items()):
            return
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)


@pytest.fixture
def servers():
    started: list[NamedEchoServer] = []
    yield lambda *names: [started.append(NamedEchoServer(n)) or started[-1] for n in names]
    for server in started:
        server.close()


def test_round_robin_follows_smooth_weighted_order(tmp_path: Path, servers) -> None:
    a, b = servers("a", "b")
    (port,) = free_ports(1)
    config = {"Workers": 2, "Apps": [app("w", [port], [weighted(a, 3), weighted(b, 1)])]}
    proxy = Proxy(tmp_path, config)
    answered = [ask(port) for _ in range(24)]
    # Interleaved, 3:1: a a b a, never a a a b.
    assert answered == ["a", "a", "b", "a"] * 6
    targets = proxy.status()["apps"][0]["targets"]
    assert [(t["weight"], t["backup"]) for t in targets] == [(3, False), (1, False)]
    assert proxy.stop() == 0


def test_round_robin_is_exact_across_workers(tmp_path: Path, servers) -> None:
    """Workers share one cursor into the cycle: however clients race, 400
    connections (100 cycles of a a b a) split exactly 300:100."""
    a, b = servers("a", "b")
    (port,) = free_ports(1)
    config = {"Workers": 4, "Apps": [app("w", [port], [weighted(a, 3), weighted(b, 1)])]}
    proxy = Proxy(tmp_path, config)
    with ThreadPoolExecutor(16) as pool:
        answered = Counter(pool.map(lambda _: ask(port), range(400)))
    assert answered == {"a": 300, "b": 100}
    assert proxy.stop() == 0


def test_round_robin_three_targets_matches_nginx(tmp_path: Path, servers) -> None:
    backends = servers("x", "y", "z")
    weights = [5, 1, 2]
    (port,) = free_ports(1)
    targets = [weighted(s, w) for s, w in zip(backends, weights)]
    proxy = Proxy(tmp_path, {"Apps": [app("w3", [port], targets)]})
    answered = [ask(port) for _ in range(32)]
    assert answered == ["xyz"[i] for i in swrr(weights, 32)]
    assert Counter(answered) == {"x": 20, "y": 4, "z": 8}
    assert proxy.stop() == 0


def test_round_robin_down_target_gives_no_turns_to_its_neighbour(tmp_path: Path, servers) -> None:
    a, b, c = servers("a", "b", "c")
    (port,) = free_ports(1)
    targets = [weighted(a, 2), weighted(b, 1), weighted(c, 1)]
    proxy = Proxy(tmp_path, {"Apps": [app("w", [port], targets, HealthCheck=CHECK)]})
    b.close()
    wait_state(proxy, "w", {f"127.0.0.1:{b.port}": "down"})
    assert Counter(ask(port) for _ in range(30)) == {"a": 20, "c": 10}
    assert proxy.stop() == 0


def test_random_and_source_hash_honour_weights(tmp_path: Path, servers) -> None:
    a, b = servers("a", "b")
    p_random, p_hash = free_ports(2)
    targets = [weighted(a, 3), weighted(b, 1)]
    apps = [app("rnd", [p_random], targets, Balance="random")]
    apps.append(app("sh", [p_hash], targets, Balance="source-hash"))
    proxy = Proxy(tmp_path, {"Apps": apps})
    # 400 draws at 3:1: mean 300, standard deviation 8.7
    seen = Counter(ask(p_random) for _ in range(400))
    assert 255 <= seen["a"] <= 345, seen
    # 240 client addresses at 3:1: mean 180, standard deviation 6.7; each one sticks
    sources = [f"127.0.{i // 200}.{2 + i % 200}" for i in range(240)]
    chosen = {source: ask(p_hash, source=source) for source in sources}
    assert 145 <= Counter(chosen.values())["a"] <= 215, Counter(chosen.values())
    assert all(ask(p_hash, source=s) == chosen[s] for s in sources[:20])
    assert proxy.stop() == 0


def test_least_conn_divides_by_weight(tmp_path: Path, servers) -> None:
    a, b = servers("a", "b")
    (port,) = free_ports(1)
    targets = [weighted(a, 3), weighted(b, 1)]
    proxy = Proxy(tmp_path, {"Apps": [app("lc", [port], targets, Balance="least-conn")]})
    held = [hold(port) for _ in range(16)]
    on = Counter(name for _, name in held)
    assert 11 <= on["a"] <= 13, on  # 12:4 give or take a tie
    for sock, _ in held:
        sock.close()
    assert proxy.stop() == 0


def test_backups_only_while_no_primary_is_up(tmp_path: Path, servers) -> None:
    a, b, spare = servers("a", "b", "spare")
    (port,) = free_ports(1)
    targets = [weighted(a), weighted(b), weighted(spare, backup=True)]
    proxy = Proxy(tmp_path, {"Apps": [app("bk", [port], targets, HealthCheck=CHECK)]})
    assert Counter(ask(port) for _ in range(20)) == {"a": 10, "b": 10}

    a.close()
    wait_state(proxy, "bk", {f"127.0.0.1:{a.port}": "down"})
    assert Counter(ask(port) for _ in range(10)) == {"b": 10}
    b.close()
    wait_state(proxy, "bk", {f"127.0.0.1:{b.port}": "down"})
    assert Counter(ask(port) for _ in range(10)) == {"spare": 10}

    revived = NamedEchoServer("a", port=a.port)
    try:
        wait_state(proxy, "bk", {f"127.0.0.1:{a.port}": "up"})
        assert Counter(ask(port) for _ in range(10)) == {"a": 10}
    finally:
        revived.close()
    (entry,) = proxy.status()["apps"]
    assert [t["backup"] for t in entry["targets"]] == [False, False, True]
    assert entry["targets"][2]["connections"] == 10
    assert proxy.stop() == 0


def test_clients_fail_over_to_backups_when_every_primary_refuses(tmp_path: Path, servers) -> None:
    (spare,) = servers("spare")
    port, dead1, dead2 = free_ports(3)
    targets = [f"127.0.0.1:{dead1}", f"127.0.0.1:{dead2}", weighted(spare, backup=True)]
    # Checks too slow and too tolerant to notice: the primaries still show up.
    slow = {"Interval": 3600, "Fall": 1000}
    proxy = Proxy(tmp_path, {"Apps": [app("fo", [port], targets, HealthCheck=slow)]})
    assert Counter(ask(port) for _ in range(6)) == {"spare": 6}
    (entry,) = proxy.status()["apps"]
    assert [t["state"] for t in entry["targets"]] == ["up", "up", "up"]
    assert entry["no_target"] == 0
    assert proxy.stop() == 0
