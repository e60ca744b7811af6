"""OnTargetDown close at scale (issue 23): N connections open on a target that is
taken down, while other clients keep talking to another target. Reports how long the
proxy takes to close all N, and the round-trip times the other clients saw before and
during the closing (a stall would show as a jump in their maximum).

    python benchmarks/close_on_down.py [N] [INTERVAL]      (defaults 10000, 2)

Root only: it runs in a network namespace of its own (no ephemeral ports taken from
anyone) and raises its descriptor limit. The target goes down by `POST
/targets/APP/TARGET/disable?close=1`, the same epoch a failed health check publishes
with OnTargetDown close, so t0 is exact. Bounded: about N / 2000 s to connect, then
at most 3 check intervals of watching."""

from __future__ import annotations

import os
import resource
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fastproxy import netns  # noqa: E402
from proxyproc import Proxy, app, free_ports  # noqa: E402

# An echo server for many connections: one process, one selector, two ports.
ECHO = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", port)); l.listen(4096); l.setblocking(False)
    sel.register(l, selectors.EVENT_READ, None)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.data is None:
            try:
                c, _ = key.fileobj.accept()
            except OSError:
                continue
            c.setblocking(False); sel.register(c, selectors.EVENT_READ, 1)
        else:
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                data = b""
            if data:
                try: key.fileobj.send(data)
                except OSError: pass
            else:
                sel.unregister(key.fileobj); key.fileobj.close()
"""


def open_many(port: int, count: int) -> list[socket.socket]:
    socks = []
    for i in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
        if i % 500 == 499:
            time.sleep(0.05)  # let the accept queue drain
    return socks


def target_active(proxy: Proxy, app_name: str) -> int:
    (entry,) = [a for a in proxy.status()["apps"] if a["name"] == app_name]
    return int(entry["targets"][0]["active"])


class Pinger(threading.Thread):
    """Clients of the other target, each sending 64 bytes and waiting for the echo,
    in turn, recording (when, round trip)."""

    def __init__(self, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.socks = [
            socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)
        ]
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.errors = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for s in self.socks:
                began = time.monotonic()
                try:
                    s.sendall(b"x" * 64)
                    got = 0
                    while got < 64:
                        got += len(s.recv(64 - got))
                except OSError:
                    self.errors += 1
                    continue
                self.samples.append((began, time.monotonic() - began))


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    # The proxy holds two descriptors per connection: N needs a hard limit above 2 N
    # (this container's is 20,000 and it lacks CAP_SYS_RESOURCE: 9,900 is its most).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * count + 150:
        sys.exit(f"{count} connections need a descriptor limit above {2 * count + 150}, not {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with netns.temporary("fpclose"), tempfile.TemporaryDirectory() as tmp:
        down_port, other_port, a_port, b_port = free_ports(4)
        echo = subprocess.Popen(
            [sys.executable, "-c", ECHO, str(a_port), str(b_port)], stdout=subprocess.PIPE
        )
        assert echo.stdout is not None and echo.stdout.readline().startswith(b"ready")
        check = {"Interval": interval, "Timeout": 1}
        config = {
            "Workers": 2,
            "Apps": [
                app(
                    "down",
                    [down_port],
                    [f"127.0.0.1:{a_port}"],
                    HealthCheck=check,
                    OnTargetDown="close",
                ),
                app(
                    "other",
                    [other_port],
                    [f"127.0.0.1:{b_port}"],
                    HealthCheck=check,
                    OnTargetDown="close",
                ),
            ],
        }
        proxy = Proxy(Path(tmp), config)
        try:
            started = time.monotonic()
            socks = open_many(down_port, count)
            while target_active(proxy, "down") < count:
                assert time.monotonic() - started < 60 + count / 200, target_active(proxy, "down")
                time.sleep(0.2)
            print(f"{count} connections open on the target in {time.monotonic() - started:.1f} s")
            pinger = Pinger(other_port, 20)
            pinger.start()
            time.sleep(2.0)  # the baseline
            ep = select.epoll()
            for s in socks:
                ep.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            code, body = proxy.http("POST", f"/targets/down/127.0.0.1:{a_port}/disable?close=1")
            t0 = time.monotonic()
            assert code == 200, body
            closed: list[float] = []
            while len(closed) < count and time.monotonic() - t0 < 3 * interval + 2:
                for fd, _ in ep.poll(0.1):
                    ep.unregister(fd)
                    closed.append(time.monotonic() - t0)
            time.sleep(0.5)
            pinger.stop.set()
            pinger.join()
            before = [rtt for at, rtt in pinger.samples if at < t0]
            during = [rtt for at, rtt in pinger.samples if t0 <= at <= t0 + max(closed, default=0)]

            def ms(values: list[float]) -> str:
                if not values:
                    return "no samples"
                q = statistics.quantiles(values, n=100)
                return (
                    f"p50 {q[49] * 1e3:.2f} ms, p99 {q[98] * 1e3:.2f} ms,"
                    f" max {max(values) * 1e3:.2f} ms ({len(values)} round trips)"
                )

            print(
                f"closed {len(closed)} of {count}: first after {min(closed, default=0):.3f} s,"
                f" half after {statistics.median(closed) if closed else 0:.3f} s,"
                f" all after {max(closed, default=0):.3f} s (check interval {interval:g} s)"
            )
            print(f"other clients before: {ms(before)}")
            print(f"other clients during: {ms(during)}; errors {pinger.errors}")
            for s in socks + pinger.socks:
                s.close()
        finally:
            proxy.stop(timeout=60)
            echo.kill()
            echo.wait()


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("root only: it makes a network namespace")
    main()
