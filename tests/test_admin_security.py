"""Who may do what on the admin endpoint (SPEC section 7): reads are open, every
POST needs the token and the endpoint's own origin; the CLI finds the token."""

from __future__ import annotations

import json
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

from fastproxy.backends import NamedEchoServer
from proxyproc import ROOT, Proxy, app, free_ports


def fastproxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastproxy", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def target_state(proxy: Proxy, target: str) -> str:
    return str(proxy.status()["apps"][0]["targets"][0]["state"])


def test_posts_need_the_token_and_our_origin(tmp_path: Path) -> None:
    backend = NamedEchoServer("a")
    (port,) = free_ports(1)
    token_file = tmp_path / "run" / "admin-token"  # its directory is created too
    config = {"Apps": [app("a", [port], [backend.address])], "AdminTokenFile": str(token_file)}
    proxy = Proxy(tmp_path, config)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    token = proxy.token()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    for path in ("/healthz", "/status", "/metrics"):
        assert proxy.http("GET", path)[0] == 200  # reads are open
    drain = f"/targets/a/{backend.address}/drain"
    wrong = token[:-1] + ("0" if token[-1] != "0" else "1")
    for headers in (
        {},
        {"Authorization": ""},
        {"Authorization": f"Bearer {wrong}"},
        {"Authorization": f"Bearer {token[:32]}"},
        {"Authorization": f"Basic {token}"},
        {"Authorization": token},
    ):
        for path in ("/reload", drain, "/no/such/endpoint"):
            code, body = proxy.http("POST", path, headers)
            assert code == 401, (headers, path, body)
    assert proxy.status()["reloads"]["success"] == 0
    assert target_state(proxy, backend.address) == "up"
    # The right token, but from a web page of another origin.
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1", "https://" + proxy.admin):
        headers = {"Authorization": f"Bearer {token}", "Origin": origin}
        assert proxy.http("POST", drain, headers)[0] == 403, origin
    assert target_state(proxy, backend.address) == "up"
    own = {"Authorization": f"bearer {token}", "Origin": f"http://{proxy.admin}"}
    assert proxy.http("POST", drain, own)[0] == 200
    assert target_state(proxy, backend.address) == "draining"
    assert proxy.http("POST", "/reload") == (
        200,
        b'{\n "result": "success",\n "restart_required": []\n}\n',
    )
    assert proxy.status()["reloads"]["success"] == 1
    assert "not loopback" not in proxy.log()
    assert proxy.stop() == 0
    backend.close()


def test_cli_target_commands_with_the_token(tmp_path: Path) -> None:
    backend = NamedEchoServer("a")
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("web", [port], [backend.address])]})
    where = ["--admin", proxy.admin, "--token-file", str(proxy.token_file)]
    for action, state in (("drain", "draining"), ("disable", "disabled"), ("enable", "up")):
        result = fastproxy("target", action, "web", backend.address, *where)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"app web: target {backend.address}: {state}\n"
        assert target_state(proxy, backend.address) == state
    # The token file named by the config (whose Admin has port 0, so --admin too).
    by_config = ["--config", str(proxy.config_path), "--admin", proxy.admin]
    result = fastproxy("target", "disable", "web", backend.address, *by_config)
    assert result.returncode == 0 and target_state(proxy, backend.address) == "disabled"
    stale = tmp_path / "stale-token"
    stale.write_text("0" * 64 + "\n")
    stale_where = ["--admin", proxy.admin, "--token-file", str(stale)]
    for args, expected in (
        (["target", "drain", "web", backend.address, *stale_where], "does not accept the token"),
        (["target", "drain", "nope", backend.address, *where], 'no app "nope"'),
        (["target", "drain", "web", "10.9.9.9:1", *where], "has no target 10.9.9.9:1"),
        (["target", "explode", "web", backend.address, *where], "No such command 'explode'"),
        (["reload", "--admin", proxy.admin, "--token-file", str(tmp_path / "nope")], "not found"),
        (["reload", "--config", str(proxy.config_path)], "Admin has port 0"),
        (["status", "--admin", "127.0.0.1:1"], "cannot reach the admin endpoint"),
    ):
        result = fastproxy(*args)
        assert result.returncode != 0, args
        assert "Traceback" not in result.stderr
        assert expected in result.stderr.strip().splitlines()[-1], (args, result.stderr)
    assert target_state(proxy, backend.address) == "disabled"
    assert proxy.stop() == 0
    backend.close()


def test_serve_refuses_a_token_file_others_can_read(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    token_file = tmp_path / "admin-token"
    token_file.write_text("planted\n")
    token_file.chmod(0o644)
    config = tmp_path / "fastproxy.json"
    config.write_text(
        json.dumps(
            {
                "Apps": [app("a", [port], ["127.0.0.1:9"])],
                "Listen": "127.0.0.1",
                "Admin": "127.0.0.1:0",
                "AdminTokenFile": str(token_file),
            }
        )
    )
    result = fastproxy("serve", str(config), "--control-socket", str(tmp_path / "control.sock"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: admin token file {token_file}: mode 0644 lets others read or write it;"
        f" chmod 600 {token_file}"
    ]
    socket.create_server(("127.0.0.1", port)).close()  # it never listened there


def test_admin_off_loopback_warns_that_reads_are_open(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    config = {"Apps": [app("a", [port], ["127.0.0.1:9"])], "Admin": "0.0.0.0:0"}
    proxy = Proxy(tmp_path, config)
    assert "are open to the network" in proxy.log()
    assert proxy.http("GET", "/healthz") == (200, b"ok\n")
    assert proxy.stop() == 0
