"""Processes for the benchmarks: started pinned to a CPU, watched through /proc, and
stopped by their own pid only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

HOST = "127.0.0.1"

# Two cores: the load generator's client side alone on one, the server and the proxy
# under test sharing the other (the layout the reference figures use).
CLIENT_CPU = 0
SERVER_CPU = 1

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_TCP_LISTEN = "0A"  # st column of /proc/net/tcp


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out and released: free unless raced."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def is_listening(port: int) -> bool:
    """Whether something listens on HOST:port, read from /proc/net/tcp rather than by
    connecting: a probe connection would be a client to a proxy, or the one test an
    `iperf3 -s -1` serves."""
    local = f"0100007F:{port:04X}"  # 127.0.0.1, as the kernel prints it on x86
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == local and fields[3] == _TCP_LISTEN:
                return True
    return False


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads) so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; field 3 is [0]
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


class Pinned:
    """A command run on one CPU (`taskset -c`, which execs it: the pid is the command's),
    its output in a log file. Stopped with SIGTERM, then SIGKILL, by its pid."""

    def __init__(self, argv: Sequence[str], cpu: int, log_path: Path) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *self.argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited ({self.proc.returncode}): {self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.argv[0]}: no {what} after {timeout}s: {self.log()}")
            time.sleep(0.01)

    def wait_listening(self, port: int) -> None:
        self.wait_until(lambda: is_listening(port), f"listener on port {port}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout)
            return self.proc.returncode
        finally:
            self._log.close()
