"""One fastproxy instance serving its config from a real etcd on loopback (SPEC section
8): push and get, watch-driven reloads through the same path as a file reload, the
registration, and etcd's faults (down at start, down while running, compaction,
an invalid document written straight into etcd)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from etcdproc import Etcd, EtcdProxy, cli, client, have_etcd, instances, push
from fastproxy.backends import NamedEchoServer
from proxyproc import app, free_ports
from servers import talk

pytestmark = pytest.mark.skipif(not have_etcd(), reason="etcd-server not installed")

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    server = Etcd(tmp_path_factory.mktemp("etcd") / "data").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def url(etcd: Etcd) -> str:
    """A key prefix of its own for each test."""
    return etcd.url(f"fp{os.getpid()}-{next(_prefixes)}")


@pytest.fixture
def backends() -> Iterator[dict[str, NamedEchoServer]]:
    servers = {name: NamedEchoServer(name) for name in ("a", "b")}
    yield servers
    for server in servers.values():
        server.close()


def config(*apps: dict[str, Any]) -> dict[str, Any]:
    """A fleet's config: its instances' own settings are etcdproc.LOCAL."""
    return {"Apps": list(apps)}


def ask(port: int) -> str:
    return talk(port, b"hi").partition(b"\n")[0].decode()


def wait_until(check: Any, timeout: float = 15, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, AssertionError):
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.05)


def answers(port: int, name: str) -> Any:
    return lambda: ask(port) == name


def test_push_validates_and_compare_and_swaps_get_prints(tmp_path: Path, url: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"Apps": [{"Name": "x", "Ports": [0], "Targets": []}]}')
    done = cli("config", "push", str(bad), url, check=False)
    assert (
        done.returncode == 2
        and done.stderr.startswith("error: ")
        and "Traceback" not in (done.stderr)
    )
    assert "no config" in cli("config", "get", url, check=False).stderr  # nothing written

    good = config(app("x", [7000], ["127.0.0.1:9"]))
    (tmp_path / "good.json").write_text(json.dumps(good))
    first = int(
        cli("config", "push", str(tmp_path / "good.json"), url, "--if-revision", "0").stdout
    )
    done = cli("config", "get", url)
    assert json.loads(done.stdout) == good and f"revision {first}" in done.stderr
    # a stale --if-revision writes nothing
    good2 = config(app("x", [7001], ["127.0.0.1:9"]))
    (tmp_path / "good2.json").write_text(json.dumps(good2))
    args = ("config", "push", str(tmp_path / "good2.json"), url)
    done = cli(*args, "--if-revision", str(first - 1), check=False)
    assert done.returncode == 1
    assert f"at revision {first}, not {first - 1}" in done.stderr
    assert json.loads(cli("config", "get", url).stdout) == good
    second = int(cli(*args, "--if-revision", str(first)).stdout)
    assert second > first
    # a malformed URL and an unreachable etcd: one line each
    done = cli("config", "get", "etcd://127.0.0.1:1", check=False)
    assert done.returncode == 2 and "needs a key prefix" in done.stderr
    (port,) = free_ports(1)
    done = cli("config", "get", f"etcd://127.0.0.1:{port}/fp", check=False)
    assert done.returncode == 1 and "etcd unreachable" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    # an endpoint that is down is skipped for the next one
    live = url.removeprefix("etcd://")
    assert json.loads(cli("config", "get", f"etcd://127.0.0.1:{port},{live}").stdout) == good2


def test_changes_apply_without_cutting_connections_and_are_reported(
    tmp_path: Path, url: str, backends: dict[str, NamedEchoServer]
) -> None:
    p1, p2 = free_ports(2)
    a, b = backends["a"].address, backends["b"].address
    first = push(config(app("x", [p1], [a])), url)
    proxy = EtcdProxy(tmp_path / "i", url, instance_id="solo")
    assert ask(p1) == "a"
    record = instances(url)["solo"]
    assert record["config_revision"] == first and record["pid"] == proxy.pid
    assert record["steering"] == "ports" and record["healthy"] and record["applied_at"]
    assert {"id", "host", "version"} <= record.keys()
    assert proxy.metric("fastproxy_config_revision") == first
    assert proxy.metric("fastproxy_config_source_up") == 1

    held = socket.create_connection(("127.0.0.1", p1), timeout=10)
    held.sendall(b"before")
    # move the target and add a port: new connections follow, the held one stays
    second = push(config(app("x", [p1, p2], [b])), url)
    wait_until(answers(p2, "b"), what="the new port")
    assert ask(p1) == "b"
    held.sendall(b"-after")
    held.shutdown(socket.SHUT_WR)
    assert held.makefile("rb").read() == b"a\nbefore-after"
    held.close()
    wait_until(lambda: instances(url)["solo"]["config_revision"] == second)
    assert proxy.metric("fastproxy_config_revision") == second
    assert proxy.status()["reloads"] == {"success": 1, "failure": 0}
    assert proxy.stop() == 0
    assert "solo" not in instances(url)  # a clean stop withdraws the registration


def test_invalid_document_in_etcd_is_rejected_reported_and_old_config_kept(
    tmp_path: Path, url: str, backends: dict[str, NamedEchoServer]
) -> None:
    (p1,) = free_ports(1)
    good = push(config(app("x", [p1], [backends["a"].address])), url)
    proxy = EtcdProxy(tmp_path / "i", url, instance_id="strict")
    etcd = client(url)
    # written straight into etcd, past push's validation
    bad = etcd.put_if(etcd.url.config_key, b'{"Apps": [{"Name": "x", "Ports": [70000]}]}', None)
    wait_until(lambda: instances(url)["strict"]["rejected_revision"] == bad)
    record = instances(url)["strict"]
    assert record["config_revision"] == good and record["lags"]
    assert record["rejected_error"].startswith(f"{url}/config: ")
    assert "70000" in record["rejected_error"]
    shown = cli("cluster", "status", url, check=False)
    assert f"rejected revision {bad}" in shown.stdout
    assert shown.returncode == 3  # an instance lags: a monitoring check sees it
    assert proxy.status()["reloads"] == {"success": 0, "failure": 1}
    assert b'fastproxy_reloads_total{result="failure"} 1.0' in proxy.http("GET", "/metrics")[1]
    assert ask(p1) == "a"  # still serving the old config
    fixed = push(config(app("x", [p1], [backends["b"].address])), url)
    wait_until(answers(p1, "b"))
    wait_until(lambda: instances(url)["strict"]["config_revision"] == fixed)
    assert instances(url)["strict"]["rejected_revision"] is None
    assert cli("cluster", "status", url).returncode == 0  # all current again
    assert proxy.stop() == 0


def test_updates_missed_while_away_and_compacted_are_applied(
    tmp_path: Path, etcd: Etcd, url: str, backends: dict[str, NamedEchoServer]
) -> None:
    """The instance is frozen while the config changes twice and etcd compacts its
    history past the revision the instance watches from: it re-reads and goes on."""
    p1, p2 = free_ports(2)
    push(config(app("x", [p1], [backends["a"].address])), url)
    proxy = EtcdProxy(tmp_path / "i", url, instance_id="sleeper")
    os.kill(proxy.pid, signal.SIGSTOP)
    try:
        for target in ("b", "a", "b"):  # the watch resumes from a compacted revision
            push(config(app("x", [p1], [backends[target].address])), url)
        last = push(config(app("x", [p1, p2], [backends["b"].address])), url)
        assert etcd.compact() >= last
    finally:
        os.kill(proxy.pid, signal.SIGCONT)
    wait_until(answers(p2, "b"), what="the latest config")
    wait_until(lambda: proxy.metric("fastproxy_config_revision") == last)
    assert proxy.stop() == 0


def test_etcd_down_at_start_serves_the_cache_then_catches_up(
    tmp_path: Path, backends: dict[str, NamedEchoServer]
) -> None:
    etcd = Etcd(tmp_path / "etcd").start()
    try:
        url = etcd.url()
        p1, p2 = free_ports(2)
        cached = push(config(app("x", [p1], [backends["a"].address])), url)
        proxy = EtcdProxy(tmp_path / "i", url, "--lease-ttl", "3", instance_id="cached")
        assert proxy.stop() == 0
        etcd.kill()
        # etcd is away: the instance starts on the cached config and says so
        proxy = EtcdProxy(tmp_path / "i", url, "--lease-ttl", "3", instance_id="cached")
        assert f"starting on the cached config of revision {cached}" in proxy.log()
        assert ask(p1) == "a"
        assert proxy.metric("fastproxy_config_source_up") == 0
        etcd.start()
        newer = push(config(app("x", [p1, p2], [backends["b"].address])), url)
        wait_until(answers(p2, "b"), what="the config pushed after etcd came back")
        assert proxy.metric("fastproxy_config_source_up") == 1
        assert proxy.metric("fastproxy_config_revision") == newer
        # down while running: keep serving, reconnect, miss nothing
        etcd.kill()
        wait_until(lambda: proxy.metric("fastproxy_config_source_up") == 0, what="source down")
        assert ask(p2) == "b"
        etcd.start()
        latest = push(config(app("x", [p2], [backends["a"].address])), url)
        wait_until(answers(p2, "a"), what="the config pushed after the restart")
        wait_until(lambda: instances(url)["cached"]["config_revision"] == latest)
        assert proxy.stop() == 0
    finally:
        etcd.stop()


def test_no_cache_and_no_etcd_waits_logging_each_retry(
    tmp_path: Path, backends: dict[str, NamedEchoServer]
) -> None:
    etcd = Etcd(tmp_path / "etcd")  # not started yet
    url = etcd.url()
    proxy = EtcdProxy(tmp_path / "i", url, instance_id="patient", wait=False)
    proxy.wait_log("retry 2 in")
    assert "waiting for etcd: read /fp/config: etcd unreachable" in proxy.log()
    assert proxy.proc.poll() is None
    try:
        etcd.start()
        (p1,) = free_ports(1)
        push(config(app("x", [p1], [backends["a"].address])), url)
        proxy.wait_serving()
        assert ask(p1) == "a"
        assert proxy.stop() == 0
    finally:
        etcd.stop()


def test_watch_and_lease_threads_survive_unexpected_errors(
    tmp_path: Path, url: str, backends: dict[str, NamedEchoServer]
) -> None:
    p1, p2 = free_ports(2)
    push(config(app("x", [p1], [backends["a"].address])), url)
    failing = {"FASTPROXY_FAILPOINTS": "etcd.watch*2,etcd.lease*2"}
    proxy = EtcdProxy(tmp_path / "i", url, instance_id="hardy", env=failing)
    proxy.wait_log("etcd watch: unexpected error")
    proxy.wait_log("registration: unexpected error")
    latest = push(config(app("x", [p1, p2], [backends["b"].address])), url)
    wait_until(answers(p2, "b"), what="a push after the errors")
    wait_until(lambda: instances(url)["hardy"]["config_revision"] == latest)
    assert proxy.stop() == 0
