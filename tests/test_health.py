"""Health checks and balancing policies, with real backends that die and come back."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastproxy.backends import NamedEchoServer
from fastproxy.targets.health import Hysteresis
from proxyproc import Proxy, app, free_ports, wait_for_port
from servers import talk


def ask(port: int, payload: bytes = b"ping", source: str | None = None) -> str:
    """Which backend answered a fresh connection (its first line)."""
    name, _, echo = talk(port, payload, source=source).partition(b"\n")
    assert echo == payload
    return name.decode()


def hold(port: int) -> tuple[socket.socket, str]:
    """An open connection and the backend it reached."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    line = b""
    while not line.endswith(b"\n"):
        line += sock.recv(1)
    return sock, line.decode().strip()


def target_entry(proxy: Proxy, app_name: str, address: str) -> dict[str, Any]:
    for entry in proxy.status()["apps"]:
        if entry["name"] == app_name:
            for target in entry["targets"]:
                if target["address"] == address:
                    return dict(target)
    raise KeyError(address)


def target_state(proxy: Proxy, app_name: str, address: str) -> str:
    return str(target_entry(proxy, app_name, address)["state"])


def wait_state(proxy: Proxy, app_name: str, address: str, state: str, limit: float) -> float:
    """Seconds until the target shows `state`; fails past `limit`."""
    started = time.monotonic()
    while target_state(proxy, app_name, address) != state:
        elapsed = time.monotonic() - started
        assert elapsed < limit, f"{address} not {state} after {elapsed:.2f}s"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
def pair() -> Iterator[list[NamedEchoServer]]:
    servers = [NamedEchoServer("a"), NamedEchoServer("b")]
    yield servers
    for server in servers:
        server.close()


CHECK = {"Interval": 0.25, "Timeout": 0.25, "Rise": 2, "Fall": 3}


def test_hysteresis_needs_streaks() -> None:
    state = Hysteresis(rise=2, fall=3)
    assert [state.record(ok) for ok in (False, False, True, False, False)] == [False] * 5
    assert state.up
    assert state.record(False) is True and not state.up
    assert [state.record(ok) for ok in (True, False, True)] == [False] * 3
    assert state.record(True) is True and state.up


def test_dead_backend_leaves_rotation_and_comes_back(tmp_path: Path, pair) -> None:
    a, b = pair
    (port,) = free_ports(1)
    targets = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    proxy = Proxy(tmp_path, {"Apps": [app("hc", [port], targets, HealthCheck=CHECK)]})
    assert {ask(port) for _ in range(4)} == {"a", "b"}

    b.close()
    # Fall x Interval, plus one Timeout, plus the first check's phase and polling.
    took = wait_state(proxy, "hc", targets[1], "down", 3 * 0.25 + 0.25 + 0.5)
    assert Counter(ask(port) for _ in range(20)) == {"a": 20}

    revived = NamedEchoServer("b", port=b.port)
    took = wait_state(proxy, "hc", targets[1], "up", 2 * 0.25 + 0.25 + 0.5)
    assert Counter(ask(port) for _ in range(20)) == {"a": 10, "b": 10}
    print(f"marked up {took:.2f}s after the restart")
    revived.close()
    assert proxy.stop() == 0


def test_flapping_backend_does_not_flip_every_flap(tmp_path: Path, pair) -> None:
    a, b = pair
    (port,) = free_ports(1)
    check = {"Interval": 0.1, "Timeout": 0.1, "Rise": 3, "Fall": 5}
    targets = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    proxy = Proxy(tmp_path, {"Apps": [app("flap", [port], targets, HealthCheck=check)]})
    wait_state(proxy, "flap", targets[1], "up", 1)
    stop = threading.Event()

    def flap() -> None:
        # Down 0.15 s, up 0.15 s: two checks in a row see it down, three when the
        # restart stalls on a busy machine; Fall 5 (0.4 s down) is never reached.
        server = b
        while not stop.is_set():
            server.close()
            time.sleep(0.15)
            server = NamedEchoServer("b", port=b.port)
            time.sleep(0.15)
        server.close()

    before = target_entry(proxy, "flap", targets[1])
    flapper = threading.Thread(target=flap)
    flapper.start()
    states = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        states.append(target_state(proxy, "flap", targets[1]))
        time.sleep(0.02)
    stop.set()
    flapper.join()
    after = target_entry(proxy, "flap", targets[1])
    assert set(states) == {"up"}, Counter(states)
    # The checks did see the backend go away and come back, many times over.
    failed = after["checks_failed"] - before["checks_failed"]
    passed = after["checks_passed"] - before["checks_passed"]
    assert failed >= 5 and passed >= 5, (failed, passed)
    assert proxy.stop() == 0
    assert "is down" not in proxy.log()


def test_least_conn_prefers_the_idle_target(tmp_path: Path, pair) -> None:
    a, b = pair
    (port,) = free_ports(1)
    targets = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    proxy = Proxy(tmp_path, {"Apps": [app("lc", [port], targets, Balance="least-conn")]})
    # Load "a" with three held connections while "b" takes none.
    assert proxy.http("POST", f"/targets/lc/{targets[1]}/disable")[0] == 200
    held = [hold(port) for _ in range(3)]
    assert [name for _, name in held] == ["a"] * 3
    assert proxy.http("POST", f"/targets/lc/{targets[1]}/enable")[0] == 200
    # Now every new connection goes to the least loaded: b, b, b, then either.
    more = [hold(port) for _ in range(3)]
    assert [name for _, name in more] == ["b"] * 3
    for sock, _ in held + more:
        sock.close()
    assert proxy.stop() == 0


def test_source_hash_keeps_a_client_on_one_target(tmp_path: Path) -> None:
    servers = [NamedEchoServer(f"s{i}") for i in range(4)]
    (port,) = free_ports(1)
    targets = [f"127.0.0.1:{s.port}" for s in servers]
    proxy = Proxy(tmp_path, {"Apps": [app("sh", [port], targets, Balance="source-hash")]})
    assert len({ask(port, source="127.0.0.1") for _ in range(100)}) == 1
    # Different client addresses spread out, and each is sticky too.
    chosen = {}
    for i in range(2, 30):
        source = f"127.0.0.{i}"
        chosen[source] = {ask(port, source=source) for _ in range(3)}
    assert all(len(names) == 1 for names in chosen.values())
    assert len({next(iter(names)) for names in chosen.values()}) >= 3
    assert proxy.stop() == 0
    for server in servers:
        server.close()


def test_random_uses_every_target(tmp_path: Path) -> None:
    servers = [NamedEchoServer(f"r{i}") for i in range(3)]
    (port,) = free_ports(1)
    targets = [f"127.0.0.1:{s.port}" for s in servers]
    proxy = Proxy(tmp_path, {"Apps": [app("rnd", [port], targets, Balance="random")]})
    seen = Counter(ask(port) for _ in range(150))
    assert set(seen) == {"r0", "r1", "r2"}
    assert min(seen.values()) >= 20
    assert proxy.stop() == 0
    for server in servers:
        server.close()


def test_panic_mode_still_tries_targets_marked_down(tmp_path: Path) -> None:
    port, first, second = free_ports(3)
    # Both targets are down for the checks; Rise is so high that the one we start
    # later stays marked down, though it answers.
    check = {"Interval": 0.1, "Timeout": 0.1, "Rise": 100000, "Fall": 1}
    targets = [f"127.0.0.1:{first}", f"127.0.0.1:{second}"]
    proxy = Proxy(tmp_path, {"Apps": [app("panic", [port], targets, HealthCheck=check)]})
    for address in targets:
        wait_state(proxy, "panic", address, "down", 2)
    alive = NamedEchoServer("alive", port=second)
    assert Counter(ask(port) for _ in range(10)) == {"alive": 10}
    assert target_state(proxy, "panic", targets[1]) == "down"
    code, body = proxy.http("GET", "/metrics")
    assert b'fastproxy_panic_total{app="panic"} 10.0' in body
    alive.close()
    assert proxy.stop() == 0


def test_panic_false_closes_clients_when_no_target_is_up(tmp_path: Path) -> None:
    port, first, second = free_ports(3)
    check = {"Interval": 0.1, "Timeout": 0.1, "Rise": 100000, "Fall": 1}
    targets = [f"127.0.0.1:{first}", f"127.0.0.1:{second}"]
    config = {"Apps": [app("strict", [port], targets, HealthCheck=check, Panic=False)]}
    proxy = Proxy(tmp_path, config)
    for address in targets:
        wait_state(proxy, "strict", address, "down", 2)
    alive = NamedEchoServer("alive", port=second)  # answers, but is marked down
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert sock.recv(100) == b""  # closed at once: no target for it
    code, body = proxy.http("GET", "/metrics")
    # Not alive.accepted, which counts the health checks (every 0.1 s) too.
    assert f'fastproxy_connections_total{{app="strict",target="{targets[1]}"}} 0.0'.encode() in body
    assert b'fastproxy_panic_total{app="strict"} 0.0' in body
    assert b'fastproxy_no_target_total{app="strict"} 10.0' in body
    alive.close()
    assert proxy.stop() == 0


def test_drained_target_keeps_its_connections(tmp_path: Path, pair) -> None:
    a, b = pair
    (port,) = free_ports(1)
    targets = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    proxy = Proxy(tmp_path, {"Apps": [app("dr", [port], targets)]})
    held = [hold(port) for _ in range(2)]
    on_b = next(sock for sock, name in held if name == "b")
    code, body = proxy.http("POST", f"/targets/dr/{targets[1]}/drain")
    assert code == 200 and b"draining" in body
    assert Counter(ask(port) for _ in range(10)) == {"a": 10}
    on_b.sendall(b"still flowing")
    assert on_b.recv(100) == b"still flowing"
    assert target_state(proxy, "dr", targets[1]) == "draining"
    code, body = proxy.http("GET", "/metrics")
    assert f'fastproxy_target_up{{app="dr",target="{targets[1]}"}} 0.0'.encode() in body
    for sock, _ in held:
        sock.close()
    assert proxy.stop() == 0


@pytest.fixture
def redis() -> Iterator[int]:
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no", "--protected-mode", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def silent_listener() -> socket.socket:
    """Accepts (the kernel does) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def test_send_expect_check(tmp_path: Path, redis: int, pair) -> None:
    echo = pair[0]  # accepts and answers, but not +PONG
    silent = silent_listener()
    (port,) = free_ports(1)
    targets = [
        f"127.0.0.1:{redis}",
        f"127.0.0.1:{echo.port}",
        f"127.0.0.1:{silent.getsockname()[1]}",
    ]
    check = {**CHECK, "Type": "send-expect", "Send": "PING\\r\\n", "Expect": "+PONG\\r\\n"}
    proxy = Proxy(tmp_path, {"Apps": [app("redis", [port], targets, HealthCheck=check)]})
    wait_state(proxy, "redis", targets[1], "down", 3)
    wait_state(proxy, "redis", targets[2], "down", 3)
    ok, wrong, mute = (target_entry(proxy, "redis", t) for t in targets)
    assert ok["state"] == "up" and ok["last_check"]["ok"] is True
    assert ok["last_check"]["error"] is None and ok["checks_failed"] == 0
    assert abs(ok["last_check"]["at"] - time.time()) < 5
    assert wrong["last_check"]["ok"] is False
    # the echo answers its name and the PING back, and never +PONG
    assert wrong["last_check"]["error"] == (
        "timed out waiting for the reply (8 bytes received) after 0.25s"
    )
    assert mute["last_check"]["error"] == (
        "timed out waiting for the reply (0 bytes received) after 0.25s"
    )
    # Only the real redis takes clients.
    for _ in range(5):
        assert talk(port, b"PING\r\n") == b"+PONG\r\n"
    silent.close()
    assert proxy.stop() == 0


class Toggle(http.server.BaseHTTPRequestHandler):
    status = 200
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        Toggle.seen.append((self.path, self.headers.get("Host")))
        self.send_response(Toggle.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_http_check_follows_the_status(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Toggle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (port,) = free_ports(1)
    target = f"127.0.0.1:{server.server_address[1]}"
    check = {**CHECK, "Type": "http", "Path": "/ready?x=1", "Host": "svc.example"}
    try:
        proxy = Proxy(tmp_path, {"Apps": [app("web", [port], [target], HealthCheck=check)]})
        deadline = time.monotonic() + 2
        while target_entry(proxy, "web", target)["checks_passed"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert target_entry(proxy, "web", target)["last_check"]["ok"] is True
        assert ("/ready?x=1", "svc.example") in Toggle.seen
        Toggle.status = 500
        wait_state(proxy, "web", target, "down", 3 * 0.25 + 0.25 + 1)
        error = target_entry(proxy, "web", target)["last_check"]["error"]
        assert error == "HTTP status 500, expected 200-399"
        Toggle.status = 204
        wait_state(proxy, "web", target, "up", 2 * 0.25 + 0.25 + 1)
        assert proxy.stop() == 0
    finally:
        Toggle.status = 200
        server.shutdown()
        server.server_close()


def test_checker_survives_running_out_of_descriptors(tmp_path: Path, pair) -> None:
    """Probes that hit EMFILE are counted and logged once; the thread goes on. The
    admin endpoint's first request, made while out of descriptors, is answered once
    they come back (it found h11 broken for good, from importlib's LazyLoader)."""
    a, b = pair
    silent = [silent_listener() for _ in range(80)]
    (port,) = free_ports(1)
    live = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    # 80 targets that accept and never answer each hold a probe socket for the whole
    # Timeout: far more than the descriptors left under a limit of 64.
    hog = [f"127.0.0.1:{s.getsockname()[1]}" for s in silent]
    hog_check = {"Interval": 0.1, "Timeout": 1, "Type": "send-expect", "Expect": "x"}
    apps = [app("live", [port], live, HealthCheck=CHECK), app("hog", free_ports(1), hog)]
    apps[1]["HealthCheck"] = hog_check
    proxy = Proxy(tmp_path, {"Workers": 1, "Apps": apps}, prefix=["prlimit", "--nofile=64"])
    deadline = time.monotonic() + 10
    while "(EMFILE)" not in proxy.log():
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.1)
    # The admin endpoint's first request comes while the probes hold every descriptor:
    # the client waits in the backlog (neither h11's files nor the client can be
    # opened) and is answered once descriptors come back.
    answer: dict[str, Any] = {}
    asker = threading.Thread(target=lambda: answer.update(proxy.status()))
    asker.start()
    time.sleep(0.5)
    for sock in silent:
        sock.close()  # the hog's probes now fail fast: descriptors come back
    b.close()
    asker.join(15)
    assert "apps" in answer, proxy.log()
    assert "admin: cannot" in proxy.log()  # the request did come while out of them
    wait_state(proxy, "live", live[1], "down", 5)
    status = proxy.status()
    assert status["health_check_errors"]["EMFILE"] >= 1
    assert proxy.log().count("(EMFILE)") == 1
    assert Counter(ask(port) for _ in range(4)) == {"a": 4}
    assert proxy.stop() == 0


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_health_thread_sleeps_between_checks(tmp_path: Path, pair) -> None:
    """Between checks the thread sleeps until something is due, also with a disabled
    target (whose last due time stays in the past) and a long interval: a due time it
    never acts on must not turn the loop into a spin."""
    a, b = pair
    (port,) = free_ports(1)
    targets = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    checks = {"Interval": 0.1, "Timeout": 0.1}
    proxy = Proxy(tmp_path, {"Apps": [app("idle", [port], targets, HealthCheck=checks)]})
    time.sleep(0.5)  # both checked at least once: both have a due time
    assert proxy.http("POST", f"/targets/idle/{targets[1]}/disable")[0] == 200
    before = cpu_seconds(proxy.pid)
    time.sleep(3)
    spent = cpu_seconds(proxy.pid) - before
    # A spin would take a whole core (3 s); checks and polls cost milliseconds.
    assert spent < 0.5, spent
    assert target_state(proxy, "idle", targets[1]) == "disabled"
    assert proxy.stop() == 0
