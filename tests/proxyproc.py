"""Run fastproxy as a real process, the way an operator does, for the tests."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_ports(count: int) -> list[int]:
    """Ports free on every address of both families, chosen outside the kernel's
    ephemeral range. A port bind(0) hands out is one any connect() or bind(0) on the
    machine may take again before the proxy binds it, and a trial bind on 127.0.0.1
    misses a socket on ::1 or another address that a dual-stack [::] listener meets
    (CI: "cannot listen on [::]:60937: Address already in use")."""
    low, _ = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    candidates = [p for p in range(_FIRST_CHOSEN_PORT, low) if p not in _HANDED_OUT]
    ports: list[int] = []
    for port in random.sample(candidates, len(candidates)):
        if len(ports) == count:
            break
        if _bindable_everywhere(port):
            ports.append(port)
    if len(ports) < count:
        raise RuntimeError(f"fewer than {count} free ports below {low}")
    _HANDED_OUT.update(ports)  # never twice in one session: a test may not bind at once
    return ports


# Below: well-known services (etcd 2379, redis 6379), and the fixed ports some tests and
# the benchmarks bind in a netns of their own (10000-24999), where a picked one may land.
_FIRST_CHOSEN_PORT = 25000
_HANDED_OUT: set[int] = set()


def _bindable_everywhere(port: int) -> bool:
    # Without SO_REUSEADDR: a connection still in TIME_WAIT on the port counts as busy.
    with socket.socket(socket.AF_INET6) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind(("::", port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


RUNNING: list[Proxy] = []  # killed after each test by the autouse fixture in conftest


class Proxy:
    """`fastproxy serve` on a config written to tmp_path; stopped with SIGTERM."""

    def __init__(
        self,
        tmp_path: Path,
        config: dict[str, Any],
        *args: str,
        prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
        default_admin: bool = False,
        pass_fds: tuple[int, ...] = (),
        start_timeout: float = 15,
        python: str = sys.executable,
        cwd: Path = ROOT,
        admin_socket: bool = True,
    ) -> None:
        # Unless a test says otherwise: one socket per port, loopback only, an admin
        # endpoint on a free port (read back from the log; `default_admin`: the real
        # default) and its token in tmp_path.
        self.token_file = Path(config.get("AdminTokenFile", tmp_path / "admin-token"))
        admin = {} if default_admin else {"Admin": "127.0.0.1:0"}
        # Kept for every rewrite too (write_config): a rewrite that dropped them would
        # change restart-only settings, and `fastproxy reload` would rightly exit 3.
        self.defaults = {"Steering": "ports", "Listen": "127.0.0.1", **admin}
        config = {**self.defaults, **config}
        self.config_path = tmp_path / "fastproxy.json"
        self.write_config(config)
        self.log_path = tmp_path / "fastproxy.log"
        if "--state-dir" not in args:  # never the host's /var/lib/fastproxy
            args = (*args, "--state-dir", str(tmp_path / "state"))
        if "--control-socket" not in args:
            args = (*args, "--control-socket", str(tmp_path / "control.sock"))
        self.control_socket = args[args.index("--control-socket") + 1]
        # The admin API's unix socket next to the control socket (a successor given the
        # same --control-socket takes it over); admin_socket=False: the default path.
        if admin_socket and "--admin-socket" not in args:
            args = (*args, "--admin-socket", str(Path(self.control_socket).parent / "admin.sock"))
        self.admin_socket = (
            args[args.index("--admin-socket") + 1]
            if "--admin-socket" in args
            else "/run/fastproxy/admin.sock"
        )
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [
                *(prefix or []),
                python,
                "-m",
                "fastproxy",
                "serve",
                str(self.config_path),
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
            pass_fds=pass_fds,
        )
        self.pid = self.proc.pid
        RUNNING.append(self)
        first_port = config["Apps"][0]["Ports"][0]
        try:
            self._wait_serving(int(str(first_port).split("-")[0]), start_timeout)
        except Exception:
            self.kill()
            raise

    def write_config(self, config: dict[str, Any]) -> None:
        """Replace the config file the way editors do: write aside, rename over."""
        config = {"AdminTokenFile": str(self.token_file), **self.defaults, **config}
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_bytes(padded(config))
        tmp.rename(self.config_path)

    def write_config_unnoticed(self, config: dict[str, Any]) -> None:
        """Rewrite the config in place, same inode, size and mtime: the file watcher
        cannot see it, so only an explicit reload (SIGHUP, admin, CLI) applies it."""
        before = os.stat(self.config_path)
        fd = os.open(self.config_path, os.O_WRONLY)
        try:
            data = padded({"AdminTokenFile": str(self.token_file), **self.defaults, **config})
            assert len(data) == before.st_size, "configs are padded to one size"
            assert os.pwrite(fd, data, 0) == len(data)
        finally:
            os.close(fd)
        os.utime(self.config_path, ns=(before.st_atime_ns, before.st_mtime_ns))

    def _wait_serving(self, port: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while b"serving" not in self.log_path.read_bytes():
            if self.proc.poll() is not None:
                raise RuntimeError(f"fastproxy exited: {self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"fastproxy did not start: {self.log()}")
            time.sleep(0.02)
        found = re.search(rb"admin=([0-9.]+):(\d+)", self.log_path.read_bytes())
        assert found, self.log()
        self.admin = f"{found.group(1).decode()}:{found.group(2).decode()}"
        self.steering = re.search(rb"steering=(\w+)", self.log_path.read_bytes()).group(1).decode()

    def wait_for_a_passed_check(self, timeout: float = 10) -> None:
        """Until the first app's first target has passed an active health check: the
        target has seen a check's connection (for a tcp check, one that leaves without a
        byte), so a test that meets them does so on every run."""
        deadline = time.monotonic() + timeout
        while not self.status()["apps"][0]["targets"][0]["checks_passed"]:
            assert time.monotonic() < deadline, f"no health check passed in {timeout:g} s"
            time.sleep(0.01)

    def token(self) -> str:
        return self.token_file.read_text().strip()

    def http(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """One request to the admin endpoint: (status, body). POSTs carry the token
        unless `headers` says otherwise."""
        if method == "POST" and headers is None:
            headers = {"Authorization": f"Bearer {self.token()}"}
        host, port = self.admin.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def status(self) -> dict[str, Any]:
        code, body = self.http("GET", "/status")
        assert code == 200, body
        return json.loads(body)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


CONFIG_SIZE = 16384


def padded(config: dict[str, Any]) -> bytes:
    """The config as JSON, padded with spaces to CONFIG_SIZE so that any two test
    configs have the same size (see Proxy.write_config_unnoticed); larger ones as they are."""
    return json.dumps(config).encode().ljust(CONFIG_SIZE)


def app(name: str, ports: list[int], targets: list[str], **extra: Any) -> dict[str, Any]:
    return {"Name": name, "Ports": ports, "Targets": targets, **extra}
