"""What every fault scenario needs: targets as processes, clients that check every
byte they get, and the after-checks (nothing left open, still serving)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from fastproxy import netns
from faultnet import entered
from pattern import PrefixCheck, pattern
from proxyproc import Proxy, free_ports

HERE = Path(__file__).resolve().parent


TARGETS: list[TargetProcess] = []  # killed after each test (conftest)


class TargetProcess:
    """tests/faults/target_server.py as a separate process (in `ns` if given)."""

    def __init__(
        self, mode: str = "echo", host: str = "127.0.0.1", port: int = 0, ns: str | None = None
    ) -> None:
        self.mode, self.host, self.ns = mode, host, ns
        self.port = port or free_ports(1)[0]
        self.address = f"{host}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        TARGETS.append(self)
        self.start()

    def start(self) -> None:
        argv = [
            sys.executable,
            str(HERE / "target_server.py"),
            self.host,
            str(self.port),
            self.mode,
        ]
        if self.ns is not None:
            argv = netns.nsenter_argv(self.ns, *argv)
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=HERE
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == b"ready\n", f"target on {self.address} did not start"

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill9()
        self.start()

    def close(self) -> None:
        self.kill9()


class Outcome(Counter[str]):
    """Client results by kind; `bytes` counts bytes verified against the pattern."""

    lock = threading.Lock()

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []  # the first few, for the failure message

    def add(self, kind: str, verified: int = 0) -> None:
        with self.lock:
            self[kind] += 1
            self["bytes"] += verified


def echo_client(
    port: int,
    size: int,
    outcome: Outcome,
    host: str = "127.0.0.1",
    timeout: float = 20,
) -> None:
    """One connection to an echo target: send `size` pattern bytes, half-close, read
    to EOF. 'ok' when everything came back; 'cut' when the echo stopped early (reset
    or FIN) but every byte received was right; 'corrupt' for any wrong byte, 'hang'
    when it timed out, 'refused' when the connect failed."""
    seed = random.getrandbits(40)
    check = PrefixCheck(seed)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        outcome.add("refused")
        outcome.errors.append(f"connect: {exc!r}")
        return
    try:
        with sock:
            writer = threading.Thread(target=_send_pattern, args=(sock, seed, size))
            writer.start()
            try:
                while data := sock.recv(1 << 18):
                    check.feed(data)
            finally:
                writer.join(timeout)
    except TimeoutError:
        outcome.add("hang")
        return
    except OSError:
        pass
    if not check.intact():
        outcome.add("corrupt")
    elif check.received == size:
        outcome.add("ok", check.received)
    else:
        outcome.add("cut", check.received)


def source_client(
    port: int, size: int, outcome: Outcome, receiving: threading.Semaphore, timeout: float = 20
) -> None:
    """One connection to a `source` target: ask for `size` pattern bytes and read to
    the end, sending nothing more (so nothing the client does provokes a reset).
    'ok' when every byte came; 'cut' when the stream ended early with a reset;
    'truncated' when it ended early with a clean FIN, passing a cut stream off as a
    whole one; 'corrupt', 'hang', 'refused' as echo_client. `receiving` is released
    when the first bytes arrive."""
    seed = random.getrandbits(40)
    check = PrefixCheck(seed)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as exc:
        outcome.add("refused")
        outcome.errors.append(f"connect: {exc!r}")
        return
    kind = "truncated"
    try:
        with sock:
            sock.sendall(b"%d %d\n" % (size, seed))
            while data := sock.recv(1 << 18):
                if check.received == 0:
                    receiving.release()
                check.feed(data)
    except TimeoutError:
        outcome.add("hang")
        return
    except ConnectionResetError:
        kind = "cut"
    if not check.intact():
        outcome.add("corrupt")
    elif check.received == size:
        outcome.add("ok", check.received)
    else:
        outcome.add(kind, check.received)


def _send_pattern(sock: socket.socket, seed: int, size: int) -> None:
    with contextlib.suppress(OSError):
        for offset in range(0, size, 1 << 16):
            sock.sendall(pattern(seed, offset, min(1 << 16, size - offset)))
        sock.shutdown(socket.SHUT_WR)


class Load:
    """Threads running echo clients back to back (in `ns`), until stopped."""

    def __init__(
        self,
        port: int,
        threads: int = 4,
        sizes: tuple[int, int] = (1, 64 << 10),
        ns: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.outcome = Outcome()
        self._stop = threading.Event()
        self._args = (port, sizes, ns, host)
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        port, (low, high), ns, host = self._args
        with entered(ns):
            while not self._stop.is_set():
                ok = self.outcome["ok"]
                echo_client(port, random.randint(low, high), self.outcome, host=host)
                if self.outcome["ok"] == ok:
                    time.sleep(0.01)  # turned away: do not spin (ephemeral ports)

    def stop(self) -> Outcome:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return self.outcome


class Prober:
    """Connects to every port in turn, continuously, and counts every failure: for
    proving that a proxy served every port throughout some ordeal."""

    def __init__(self, ports: list[int], ns: str | None = None, host: str = "127.0.0.1") -> None:
        self.ports, self.ns, self.host = ports, ns, host
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        with entered(self.ns):
            while not self._stop.is_set():
                for port in self.ports:
                    payload = os.urandom(32)
                    try:
                        with socket.create_connection((self.host, port), timeout=5) as sock:
                            sock.sendall(payload)
                            sock.shutdown(socket.SHUT_WR)
                            data = b""
                            while chunk := sock.recv(4096):
                                data += chunk
                        if data.endswith(payload):
                            self.ok += 1
                        else:
                            self.failures.append(f"port {port}: bad reply {data[-40:]!r}")
                    except OSError as exc:
                        self.failures.append(f"port {port}: {exc!r}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def socket_fds(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
    return count


def open_state(proxy: Proxy) -> dict[str, int]:
    """What the proxy holds: relay connections, active gauges, socket descriptors."""
    status = proxy.status()
    return {
        "connections": status["connections"],
        "app_active": sum(a["active"] for a in status["apps"]),
        "target_active": sum(t["active"] for a in status["apps"] for t in a["targets"]),
        "sockets": socket_fds(proxy.pid),
    }


def assert_nothing_left_open(proxy: Proxy, baseline: dict[str, int], wait: float = 15) -> None:
    """Every connection closed: gauges back to 0 and socket descriptors to baseline
    (pooled pipes are the relay's cache, not connections: not counted)."""
    deadline = time.monotonic() + wait
    while True:
        now = open_state(proxy)
        # Fewer sockets than at the baseline is fine: a health probe may have been in
        # flight when it was taken.
        if {**now, "sockets": 0} == {**baseline, "sockets": 0} and (
            now["sockets"] <= baseline["sockets"]
        ):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left open: {now} (baseline {baseline})")
        time.sleep(0.1)


def assert_serves(port: int, host: str = "127.0.0.1", clients: int = 5) -> Outcome:
    """New clients still get every byte back."""
    assert clients >= 1, "serving nobody proves nothing"
    outcome = Outcome()
    for _ in range(clients):
        echo_client(port, 200_000, outcome, host=host)
    assert outcome["ok"] == clients, f"a new client was not served: {dict(outcome)}"
    return outcome
