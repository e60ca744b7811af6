"""The whole proxy in bpf steering mode, each test in a fresh network namespace:
one socket for every port, each port reaching its own app, and clean state."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastproxy import netns
from fastproxy.backends import NamedEchoServer
from proxyproc import Proxy, app
from servers import talk

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bpf steering needs root")

PIN_ROOT = "/sys/fs/bpf/fastproxy"


@pytest.fixture
def ns() -> Iterator[int]:
    """A fresh netns entered by this thread (and inherited by the proxy); its inode."""
    with netns.temporary("fpproxy"):
        yield netns.inode()


def ask(port: int, host: str = "127.0.0.1") -> str:
    name, _, echo = talk(port, b"hi", host=host).partition(b"\n")
    assert echo == b"hi"
    return name.decode()


def listening_sockets() -> list[str]:
    out = subprocess.run(["ss", "-Htln"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def sk_lookup_links(inode: int) -> list[dict]:
    out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True)
    links = json.loads(out.stdout or "[]")
    return [
        link for link in links if link.get("type") == "netns" and link.get("netns_ino") == inode
    ]


def bpf_proxy(tmp_path: Path, apps: list[dict], **extra: object) -> Proxy:
    proxy = Proxy(tmp_path, {"Apps": apps, "Steering": "bpf", "Listen": "::", **extra})
    assert proxy.steering == "bpf"
    return proxy


def test_2000_ports_one_socket_every_port_reaches_the_app(tmp_path: Path, ns: int) -> None:
    backend = NamedEchoServer("two-thousand")
    ports = list(range(20000, 22000))
    proxy = bpf_proxy(tmp_path, [app("big", ["20000-21999"], [f"127.0.0.1:{backend.port}"])])
    # Besides the backend's and the admin endpoint's, exactly one listening socket.
    admin_port = proxy.admin.rsplit(":", 1)[1]
    others = [f":{backend.port}", f":{admin_port}"]
    proxy_listeners = [
        ln for ln in listening_sockets() if not any(ln.split()[3].endswith(o) for o in others)
    ]
    assert len(proxy_listeners) == 1, proxy_listeners
    for port in ports:
        assert ask(port) == "two-thousand", port
    counters = proxy.http("GET", "/metrics")[1]
    assert b"fastproxy_steering_steered_total 2000.0" in counters
    assert proxy.stop() == 0
    backend.close()


def test_three_apps_share_the_socket_each_port_its_own_app(tmp_path: Path, ns: int) -> None:
    backends = {name: NamedEchoServer(name) for name in ("red", "green", "blue")}
    layout = {"red": [7001, 7002, 7003], "green": [8001, 8002], "blue": [9001, 9500, 9999]}
    apps = [app(n, p, [f"127.0.0.1:{backends[n].port}"]) for n, p in layout.items()]
    proxy = bpf_proxy(tmp_path, apps, Admin="127.0.0.1:0")
    for name, ports in layout.items():
        for port in ports:
            for host in ("127.0.0.1", "::1"):
                assert ask(port, host) == name
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", 7004), timeout=5)
    assert proxy.stop() == 0
    for backend in backends.values():
        backend.close()


def test_other_programs_port_keeps_working(tmp_path: Path, ns: int) -> None:
    ours = NamedEchoServer("ours")
    theirs = NamedEchoServer("theirs", port=6500)  # not in the config
    proxy = bpf_proxy(tmp_path, [app("a", [6400, 6600], [f"127.0.0.1:{ours.port}"])])
    assert ask(6500) == "theirs"
    assert ask(6400) == "ours" and ask(6600) == "ours"
    assert proxy.stop() == 0
    ours.close()
    theirs.close()


def test_a_configured_port_already_taken_is_an_error(tmp_path: Path, ns: int) -> None:
    taken = NamedEchoServer("squatter", host="127.0.0.1", port=6700)
    with pytest.raises(RuntimeError, match="6700.*in use"):
        bpf_proxy(tmp_path, [app("a", [6700], ["127.0.0.1:9"])])
    assert ask(6700) == "squatter"  # and we did not steal it
    taken.close()


def test_a_port_taken_is_refused_by_a_reload_too(tmp_path: Path, ns: int) -> None:
    """Ports are checked with one sock_diag dump, the trial bind only where something
    listens: a busy port among many free ones is still found, in one line."""
    taken = NamedEchoServer("squatter", host="127.0.0.1", port=6750)
    proxy = bpf_proxy(tmp_path, [app("a", [6710], ["127.0.0.1:9"])])
    proxy.write_config_unnoticed(
        {
            "Apps": [app("a", [6710, "6720-6799"], ["127.0.0.1:9"])],
            "Steering": "bpf",
            "Listen": "::",
            "Admin": "127.0.0.1:0",
        }
    )
    status, body = proxy.http("POST", "/reload")
    assert status >= 400, body
    error = json.loads(body)["error"]
    assert "6750" in error and "in use" in error and "\n" not in error, error
    assert ask(6750) == "squatter"
    assert proxy.stop() == 0
    taken.close()


def test_a_port_bound_but_not_listening_is_not_refused(tmp_path: Path, ns: int) -> None:
    """Only a listener can be shadowed by the steering: a socket merely bound to the port
    (or a connection using it) is not, and does not stop the start."""
    backend = NamedEchoServer("steered")
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 6730))  # no SO_REUSEADDR: a trial bind would fail
        proxy = bpf_proxy(tmp_path, [app("a", [6730], [f"127.0.0.1:{backend.port}"])])
        assert ask(6730) == "steered"
        assert proxy.stop() == 0
    backend.close()


def test_restart_after_kill_9_replaces_stale_state(tmp_path: Path, ns: int) -> None:
    backend = NamedEchoServer("phoenix")
    apps = [app("p", [6800], [f"127.0.0.1:{backend.port}"])]
    first = bpf_proxy(
        tmp_path / "first" if (tmp_path / "first").mkdir() is None else tmp_path, apps
    )
    assert ask(6800) == "phoenix"
    first.kill()  # SIGKILL: pins and link stay behind
    assert os.path.isdir(f"{PIN_ROOT}/{ns}")
    (tmp_path / "second").mkdir()
    second = bpf_proxy(tmp_path / "second", apps)
    assert ask(6800) == "phoenix"
    assert len(sk_lookup_links(ns)) == 1
    assert second.stop() == 0
    backend.close()


def test_clean_shutdown_leaves_nothing_behind(tmp_path: Path, ns: int) -> None:
    backend = NamedEchoServer("tidy")
    proxy = bpf_proxy(tmp_path, [app("t", [6900], [f"127.0.0.1:{backend.port}"])])
    assert ask(6900) == "tidy"
    assert len(sk_lookup_links(ns)) == 1
    assert proxy.stop() == 0
    assert not os.path.exists(f"{PIN_ROOT}/{ns}")
    assert sk_lookup_links(ns) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", 6900), timeout=5)
    backend.close()


def test_a_second_instance_where_another_steers_is_a_one_line_error(
    tmp_path: Path, ns: int
) -> None:
    """Another live fastproxy owns steering here: a second `serve` must say so in one
    line naming it and exit non-zero, in every steering mode. (It used to fall back to
    ports mode with `auto` and run on: the first one's program takes the ports it
    steers, and nobody notices a second instance that serves nothing.)"""
    backend = NamedEchoServer("x")
    (tmp_path / "owner").mkdir()
    owner = bpf_proxy(tmp_path / "owner", [app("a", [7100], [backend.address])])
    # Its steering (bpf, auto), or a port it steers (in any mode): one line, exit 1.
    for mode, port in (("bpf", 7200), ("auto", 7200), ("ports", 7100)):
        (tmp_path / mode).mkdir()
        with pytest.raises(RuntimeError) as failed:
            Proxy(
                tmp_path / mode, {"Apps": [app("b", [port], [backend.address])], "Steering": mode}
            )
        lines = [ln for ln in str(failed.value).splitlines() if "error: " in ln]
        assert len(lines) == 1 and "Traceback" not in str(failed.value), failed.value
        assert f"another fastproxy (pid {owner.pid}) steers" in lines[0], lines[0]
        if mode == "ports":
            assert "steers port 7100" in lines[0], lines[0]
    # A ports-mode instance on other ports may run beside it.
    (tmp_path / "beside").mkdir()
    beside = Proxy(tmp_path / "beside", {"Apps": [app("c", [7300], [backend.address])]})
    assert ask(7300) == "x" and beside.stop() == 0
    assert ask(7100) == "x"  # the first one serves on, untouched
    assert owner.stop() == 0
    backend.close()


def test_a_restart_loads_the_program_from_the_cache(tmp_path: Path, ns: int) -> None:
    """The first start compiles steer.c and caches it; the next one loads the cached
    bytecode and never starts the compiler."""
    backend = NamedEchoServer("cached")
    cache_dir = tmp_path / "bpf-cache"
    apps = [app("c", ["7400-7409"], [backend.address])]
    logs = []
    for name in ("cold", "warm"):
        (tmp_path / name).mkdir()
        proxy = Proxy(
            tmp_path / name,
            {"Apps": apps, "Steering": "bpf", "Listen": "::"},
            env={"FASTPROXY_BPF_CACHE": str(cache_dir)},
        )
        assert proxy.steering == "bpf"
        assert ask(7400) == "cached" and ask(7409, "::1") == "cached"
        assert proxy.stop() == 0
        logs.append(proxy.log())
    cold, warm = logs
    assert "BPF program compiled by bcc" in cold and f"cached as {cache_dir}/" in cold, cold
    assert "BPF program loaded from the cache" in warm, warm
    assert "compiled by bcc" not in warm
    backend.close()
