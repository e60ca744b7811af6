"""The admin endpoint: status, exact metrics, control, and robustness to junk."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from fastproxy import netns
from fastproxy.backends import NamedEchoServer
from fastproxy.server import Server
from fastproxy.sources import FileSource
from proxyproc import ROOT, Proxy, app, free_ports
from servers import talk


def exchange(port: int, payload: bytes) -> bytes:
    return talk(port, payload)


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_equal_what_was_sent(tmp_path: Path) -> None:
    a, b = NamedEchoServer("a"), NamedEchoServer("b")
    port, dead = free_ports(2)
    targets = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}", f"127.0.0.1:{dead}"]
    quiet = {"Interval": 3600}
    proxy = Proxy(tmp_path, {"Apps": [app("m", [port], targets, HealthCheck=quiet)]})
    sent = received = 0
    answered: dict[str, int] = {"a": 0, "b": 0}
    for i in range(30):
        payload = b"q" * (100 + i)
        reply = exchange(port, payload)
        answered[reply.split(b"\n", 1)[0].decode()] += 1
        sent += len(payload)
        received += len(reply)
    time.sleep(0.1)
    code, body = proxy.http("GET", "/metrics")
    assert code == 200
    m = samples(body)
    ta, tb, td = ((("app", "m"), ("target", t)) for t in targets)
    assert m[("fastproxy_connections_total", ta)] == answered["a"]
    assert m[("fastproxy_connections_total", tb)] == answered["b"]
    assert m[("fastproxy_connections_total", td)] == 0
    # Round robin sent some clients to the dead target first; each failed over.
    assert m[("fastproxy_connect_failures_total", td)] >= 1
    assert m[("fastproxy_bytes_total", (("app", "m"), ("direction", "in")))] == sent
    assert m[("fastproxy_bytes_total", (("app", "m"), ("direction", "out")))] == received
    assert m[("fastproxy_active_connections", ta)] == 0
    assert m[("fastproxy_target_up", ta)] == 1
    assert ("fastproxy_no_target_total", (("app", "m"),)) in m
    assert ("fastproxy_reloads_total", (("result", "success"),)) in m
    status = proxy.status()
    assert status["apps"][0]["connections"] == 30
    dead_status = status["apps"][0]["targets"][2]
    assert dead_status["connect_failures"] == m[("fastproxy_connect_failures_total", td)]
    assert status["apps"][0]["bytes_in"] == sent
    assert proxy.stop() == 0
    a.close()
    b.close()


def test_status_command_prints_a_table(tmp_path: Path) -> None:
    a = NamedEchoServer("a")
    (port,) = free_ports(1)
    target = f"127.0.0.1:{a.port}"
    proxy = Proxy(
        tmp_path, {"Apps": [app("table", [port], [target, "bad.target.for.testing:6003"])]}
    )
    exchange(port, b"hello")
    result = subprocess.run(
        [sys.executable, "-m", "fastproxy", "status", "--admin", proxy.admin],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "table" in result.stdout and target in result.stdout
    row = next(line for line in result.stdout.splitlines() if "bad.target.for.testing" in line)
    assert "down" in row
    assert proxy.stop() == 0
    a.close()


def raw(proxy: Proxy, data: bytes) -> bytes:
    host, port = proxy.admin.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_junk_gets_4xx_and_the_endpoint_keeps_serving(tmp_path: Path) -> None:
    a = NamedEchoServer("a")
    (port,) = free_ports(1)
    target = f"127.0.0.1:{a.port}"
    proxy = Proxy(tmp_path, {"Apps": [app("j", [port], [target])]})
    for method, path in [
        ("GET", "/nope"),
        ("POST", "/healthz"),
        ("DELETE", "/status"),
        ("BREW", "/coffee"),
        ("POST", f"/targets/j/{target}/explode"),
        ("POST", "/targets/nope/1.2.3.4:5/drain"),
        ("POST", "/targets/j/9.9.9.9:9/drain"),
        ("POST", "/targets/j"),
    ]:
        code, _ = proxy.http(method, path)
        assert 400 <= code < 500, (method, path, code)
    for junk in [
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
        b"",
    ]:
        reply = raw(proxy, junk)
        assert reply == b"" or reply.split(b" ")[1].startswith(b"4"), reply[:80]
    assert proxy.http("GET", "/healthz") == (200, b"ok\n")
    assert exchange(port, b"hi") == b"a\nhi"
    # The index: every endpoint, so that whoever finds the port knows what it is.
    code, index = proxy.http("GET", "/")
    assert code == 200 and index.startswith(b"fastproxy admin endpoint\n"), index
    for endpoint in (b"/healthz", b"/status", b"/metrics", b"/reload", b"/targets/"):
        assert endpoint in index
    assert b"(GET / lists them)" in proxy.http("GET", "/nope")[1]
    assert proxy.stop() == 0
    a.close()


def test_admin_is_loopback_only_by_default(tmp_path: Path) -> None:
    """From another host (a netns joined by a veth pair) the app port answers and
    the admin port, on its default address (no Admin in the config, no --admin),
    does not."""
    with netns.temporary("fp-admin") as server_ns:
        peer_ns = server_ns + "-peer"
        netns.create(peer_ns)
        try:
            subprocess.run(
                [
                    "ip",
                    "link",
                    "add",
                    "fpa0",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "fpa1",
                    "netns",
                    peer_ns,
                ],
                check=True,
            )
            subprocess.run(["ip", "addr", "add", "192.0.2.1/24", "dev", "fpa0"], check=True)
            subprocess.run(["ip", "link", "set", "fpa0", "up"], check=True)
            for cmd in (
                ["addr", "add", "192.0.2.2/24", "dev", "fpa1"],
                ["link", "set", "fpa1", "up"],
            ):
                subprocess.run(["ip", "-n", peer_ns, *cmd], check=True)
            a = NamedEchoServer("a")
            config = {"Apps": [app("far", [8080], [f"127.0.0.1:{a.port}"])], "Listen": "::"}
            proxy = Proxy(tmp_path, config, default_admin=True)
            assert "Admin" not in json.loads(proxy.config_path.read_text())
            assert proxy.admin == "127.0.0.1:9901"
            assert proxy.http("GET", "/healthz")[0] == 200  # from the proxy's own host
            assert "not loopback" not in proxy.log()
            with netns.entered(netns.path(peer_ns)):
                assert talk(8080, b"hi", host="192.0.2.1") == b"a\nhi"
                try:
                    socket.create_connection(("192.0.2.1", 9901), timeout=3).close()
                    reached = True
                except OSError:
                    reached = False
            assert not reached
            assert proxy.stop() == 0
            a.close()
        finally:
            netns.delete(peer_ns)


def test_healthz_is_503_while_draining(tmp_path: Path) -> None:
    """After SIGTERM, while open connections drain, a load balancer in front must
    see the proxy as unavailable."""
    backend = NamedEchoServer("d")
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("d", [port], [backend.address])], "DrainTimeout": 60})
    held = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert held.recv(100) == b"d\n"
    assert proxy.http("GET", "/healthz") == (200, b"ok\n")
    proxy.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while (answer := proxy.http("GET", "/healthz"))[0] == 200:
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.05)
    assert answer == (503, b"draining\n")
    held.sendall(b"still here")
    assert held.recv(100) == b"still here"  # draining indeed
    assert proxy.http("GET", "/healthz") == (503, b"draining\n")
    held.close()
    assert proxy.proc.wait(5) == 0
    backend.close()


def test_healthz_names_a_helper_thread_that_died(tmp_path: Path) -> None:
    """In-process, so the threads can be ended: a health-check or config-watch thread
    that is gone makes /healthz 503 with its name."""
    (port,) = free_ports(1)
    config_path = tmp_path / "fastproxy.json"
    config_path.write_text(
        json.dumps(
            {
                "Apps": [app("h", [port], ["127.0.0.1:9"])],
                "Steering": "ports",
                "Listen": "127.0.0.1",
                "Admin": "127.0.0.1:0",
                "AdminTokenFile": str(tmp_path / "admin-token"),
            }
        )
    )
    source = FileSource(str(config_path))
    server = Server(source.load(), source=source)
    server.start()
    try:
        assert server.admin is not None
        host, admin_port = server.admin.address

        def healthz() -> tuple[int, bytes]:
            conn = http.client.HTTPConnection(host, admin_port, timeout=10)
            try:
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                return response.status, response.read()
            finally:
                conn.close()

        assert healthz() == (200, b"ok\n")
        server.health.stop()  # returns once the thread has ended
        assert healthz() == (503, b"helper thread died: health-check\n")
        source.stop()  # the file watcher's thread ends within a poll
        deadline = time.monotonic() + 5
        while healthz() != (503, b"helper thread died: health-check, config-watch\n"):
            assert time.monotonic() < deadline, healthz()
            time.sleep(0.05)
    finally:
        server.close()
