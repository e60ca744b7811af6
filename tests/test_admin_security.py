"""Who may do what on the admin endpoint (SPEC section 7): reads are open, every
POST needs the token and the endpoint's own origin; the CLI finds the token."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

from fastproxy import netns
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
    # The token file named by the config; over the admin unix socket.
    by_config = ["--config", str(proxy.config_path), "--admin-socket", proxy.admin_socket]
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
        (
            ["reload", "--config", str(proxy.config_path), "--admin-socket", str(tmp_path / "no")],
            f"cannot reach the admin endpoint at {tmp_path / 'no'}: No such file or directory",
        ),
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


def raw_get(address: str, path: str, host: str) -> int:
    """The status of one GET with exactly this Host header (a DNS-rebinding page's
    requests name the attacker's host)."""
    name, port = address.rsplit(":", 1)
    with socket.create_connection((name, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_requests_naming_another_host_are_refused(tmp_path: Path) -> None:
    """Issue 19, finding 7: a web page that rebinds its name to 127.0.0.1 reads
    nothing; the endpoint's own names work."""
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("a", [port], ["127.0.0.1:9"])]})
    _, admin_port = proxy.admin.rsplit(":", 1)
    for host in ("evil.example", f"evil.example:{admin_port}", "127.0.0.1.evil.example",
                 "localhost.evil.example", "admin.internal", "1.2.3.4.nip.io"):  # fmt: skip
        for path in ("/status", "/metrics", "/healthz"):
            assert raw_get(proxy.admin, path, host) == 403, (host, path)
    token = {"Authorization": f"Bearer {proxy.token()}", "Host": "evil.example"}
    assert proxy.http("POST", "/reload", token)[0] == 403
    for host in (f"127.0.0.1:{admin_port}", "127.0.0.1", "localhost", f"LocalHost:{admin_port}",
                 "localhost.", f"[::1]:{admin_port}", "10.1.2.3", "[fe80::1]"):  # fmt: skip
        for path in ("/status", "/metrics", "/healthz"):
            assert raw_get(proxy.admin, path, host) == 200, (host, path)
    assert proxy.status()["reloads"]["success"] == 0
    assert proxy.stop() == 0


def test_admin_hosts_names_the_endpoint_may_be_reached_by(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    config = {"Apps": [app("a", [port], ["127.0.0.1:9"])], "AdminHosts": ["admin.internal"]}
    proxy = Proxy(tmp_path, config)
    for host in ("admin.internal", "ADMIN.Internal:9901", "127.0.0.1"):
        assert raw_get(proxy.admin, "/status", host) == 200, host
    for host in ("evil.example", "x.admin.internal", "admin.internal.evil.example"):
        assert raw_get(proxy.admin, "/status", host) == 403, host
    assert proxy.stop() == 0
    for hosts, error in (
        ("admin.internal", 'expected a list of host names, got string "admin.internal"'),
        (["a b"], '"a b" is not a host name'),
        ([""], '"" is not a host name'),
    ):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**config, "AdminHosts": hosts}))
        result = fastproxy("check", str(bad))
        assert result.returncode == 2
        assert result.stderr == f"error: {bad}: AdminHosts: {error}\n", result.stderr


class FakeAdmin:
    """Whoever bound the admin TCP port while the proxy was down: records what
    arrives and answers like the endpoint would."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_server(address)
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    conn.settimeout(5)
                    with contextlib.suppress(OSError):
                        self.received += conn.recv(65536)
                        body = b'{"result": "success", "apps": []}'
                        head = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d"
                        conn.sendall(head % len(body) + b"\r\n\r\n" + body)

    def close(self) -> None:
        self.sock.close()


# The proxy and the CLI in a mount namespace of their own with a fresh /run: the
# defaults (/run/fastproxy/admin.sock, admin-token) are used as they are, unshared.
PRIVATE_RUN = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs -o mode=0755 tmpfs /run && exec "$@"', "sh"]  # fmt: skip


def test_the_cli_talks_over_the_unix_socket_by_default(tmp_path: Path) -> None:
    """Issue 19, finding 6: a listener planted on the admin TCP port never sees the
    token; `fastproxy reload` goes through /run/fastproxy/admin.sock (0600)."""
    with netns.temporary("fp-adminsock"):
        fake = FakeAdmin(("127.0.0.1", 9901))
        backend = NamedEchoServer("a")
        (port,) = free_ports(1)
        config = {"Apps": [app("web", [port], [backend.address])]}
        token_file = {"AdminTokenFile": "/run/fastproxy/admin-token"}
        proxy = Proxy(tmp_path, {**config, **token_file}, prefix=PRIVATE_RUN, admin_socket=False)

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["nsenter", f"--mount=/proc/{proxy.pid}/ns/mnt", sys.executable, "-m",
                 "fastproxy", *args],
                capture_output=True, text=True, timeout=30, cwd=ROOT,
            )  # fmt: skip

        result = cli("reload")
        assert fake.received == b"", "the token went to the TCP port"
        assert (result.returncode, result.stdout, result.stderr) == (0, "reloaded\n", "")
        run = f"/proc/{proxy.pid}/root/run/fastproxy"
        st = os.stat(f"{run}/admin.sock")
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.geteuid()
        assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
        assert proxy.status()["reloads"]["success"] == 1
        result = cli("target", "drain", "web", backend.address)
        assert result.returncode == 0, result.stderr
        assert target_state(proxy, backend.address) == "draining"
        result = cli("status")
        assert result.returncode == 0 and f"pid {proxy.pid}" in result.stdout, result.stderr
        assert fake.received == b""
        # TCP only when asked for: then that is where the token goes.
        result = cli("reload", "--admin", "127.0.0.1:9901")
        assert result.returncode == 0 and b"Authorization: Bearer" in fake.received
        assert proxy.stop() == 0
        fake.close()
        backend.close()


def test_the_cli_refuses_a_unix_socket_another_user_serves(tmp_path: Path) -> None:
    """A socket planted where others may write (here /tmp) by another user gets
    nothing from the CLI, not even a request."""
    path = f"/tmp/fp-impostor-{os.getpid()}.sock"
    impostor = subprocess.Popen(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
         sys.executable, "-c",
         "import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]);"
         " s.listen(); print('up', flush=True); c, _ = s.accept(); print(c.recv(100))",
         path],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert impostor.stdout is not None and impostor.stdout.readline() == "up\n"
        token = tmp_path / "token"
        token.write_text("secret\n")
        result = fastproxy("reload", "--admin-socket", path, "--token-file", str(token))
        assert result.returncode == 1
        uid = pwd.getpwnam("nobody").pw_uid
        assert result.stderr == (
            f"error: refusing to talk to {path}: it is served by uid {uid}"
            f" (pid {impostor.pid}), not root, us, or the owner of its directory\n"
        )
        impostor.kill()
        assert impostor.communicate(timeout=10)[0] in ("", "b''\n")  # nothing was sent
    finally:
        impostor.kill()
        impostor.wait(10)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
