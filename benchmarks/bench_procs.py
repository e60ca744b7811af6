"""Processes for the benchmarks: started pinned to a CPU, watched through /proc, and
stopped by their own pid only."""

from __future__ import annotations

import os
import resource
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from bench_config import SMOKE

HOST = "127.0.0.1"

# Two cores: the load generator's client side alone on one, the server and the proxy
# under test sharing the other (the layout the reference figures use).
CLIENT_CPU = 0
SERVER_CPU = 1

# SO_LINGER on, 0 s: close() sends a reset and leaves no TIME_WAIT behind.
RESET_LINGER = struct.pack("ii", 1, 0)
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


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after "pid (comm) ": field 3 (state) is [0], ppid [1]."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2 :].split()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads) so far, in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children...), from the ppid of
    each process in /proc (this kernel has no /proc/PID/task/TID/children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry))[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def cpu_seconds(pid: int) -> float:
    """CPU seconds so far of a proxy: the process started and every process below it (a
    master's workers: nginx's, HAProxy's in master-worker mode), each with all its
    threads (utime + stime), and the children they reaped (cutime + cstime: a worker
    that exited during the run is not lost). The root's own figure raises if it is gone;
    a descendant that exits meanwhile counts as nothing."""
    fields = _stat_fields(pid)
    total = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    for child in descendants(pid):
        try:
            total += sum(int(v) for v in _stat_fields(child)[11:15])
        except (OSError, IndexError, ValueError):
            continue
    return total / CLOCK_TICKS


def cpu_busy_seconds(cpu: int | None) -> float:
    """All busy time of one CPU so far (user, nice, system, irq, softirq of its line in
    /proc/stat), whichever task it was spent for; of every CPU with `cpu` None."""
    prefix = "cpu " if cpu is None else f"cpu{cpu} "
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(prefix):
                fields = [int(v) for v in line.split()[1:]]
                return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / CLOCK_TICKS
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


class CpuMeter:
    """CPU spent over a run, two ways: the proxy's own processes (cpu_seconds: every
    worker of a multi-process proxy; utime+stime, what they are charged, which misses
    the kernel work they cause elsewhere), and all busy time of
    the CPU it shares with the server (the proxy's and the server's work, the kernel's
    too: the robust one here, where loopback receive work lands on whoever runs). And
    all busy time of every CPU (`all_seconds`, client and server included): the one
    that also sees kernel work moved to the client's CPU or to kernel threads (the
    sockmap relay's), which the shared CPU misses."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.proxy = cpu_seconds(pid) if pid else 0.0
        self.shared = cpu_busy_seconds(SERVER_CPU)
        self.all = cpu_busy_seconds(None)
        self.all_seconds = 0.0

    def stop(self) -> tuple[float | None, float]:
        """(proxy seconds or None for the direct connection, shared CPU seconds)."""
        proxy = cpu_seconds(self.pid) - self.proxy if self.pid else None
        self.all_seconds = cpu_busy_seconds(None) - self.all
        return proxy, cpu_busy_seconds(SERVER_CPU) - self.shared


def cpu_figures(
    seconds: dict[str, float | None], amount: float, scale: float
) -> tuple[dict[str, float], dict[str, str]]:
    """CPU seconds per unit of work: each of `seconds` (figure name -> CPU seconds read
    around a run, None where there is nothing to read: the direct connection's proxy)
    times `scale` over `amount`. /proc counts whole clock ticks, so a run that cost less
    than one tick (a smoke run's few megabytes through a quiet proxy) reads 0: not a
    figure of 0 but none, left out and said why in the second dict."""
    figures: dict[str, float] = {}
    unmeasured: dict[str, str] = {}
    for name, spent in seconds.items():
        if spent is None:
            continue
        if spent <= 0:
            unmeasured[name] = f"less than one clock tick ({1e3 / CLOCK_TICKS:g} ms) counted"
            continue
        figures[name] = spent * scale / amount
    return figures, unmeasured


class Pinned:
    """A command run on one CPU (`taskset -c`, which execs it: the pid is the command's),
    its output in a log file. Stopped with SIGTERM, then SIGKILL, by its pid."""

    def __init__(
        self, argv: Sequence[str], cpu: int | str, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *self.argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(
        self, ready: Callable[[], bool], what: str, timeout: float = 15, poll: float = 0.01
    ) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited ({self.proc.returncode}): {self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.argv[0]}: no {what} after {timeout}s: {self.log()}")
            time.sleep(poll)

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


def rss_bytes(pid: int) -> int:
    """Resident memory of the process (VmRSS), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def pipes_open(pid: int) -> int:
    """How many pipe ends the process holds (its fds that are pipes)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:"):
                count += 1
        except OSError:
            pass  # closed meanwhile
    return count


def kernel_memory() -> tuple[int, int]:
    """(TCP buffer memory, slab memory), bytes, machine-wide: the "mem" pages of the
    TCP line of /proc/net/sockstat (socket buffers charged to TCP), and Slab from
    /proc/meminfo (socket, file, epoll and pipe structures; anything else allocated
    meanwhile too)."""
    tcp = 0
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                tcp = int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE")
    slab = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                slab = int(line.split()[1]) * 1024
    return tcp, slab


def slab_object_bytes() -> int:
    """Bytes of the kernel's live slab objects, machine-wide (active objects times their
    size, every cache of /proc/slabinfo): the sockets, files and epoll entries a process
    holds, which its RSS does not show. Live objects rather than Slab pages, so that pages
    left over from a process stopped before do not hide what the next one allocates."""
    total = 0
    with open("/proc/slabinfo") as f:
        for line in f:
            if line.startswith(("slabinfo", "#")):
                continue
            fields = line.split()
            total += int(fields[1]) * int(fields[3])
    return total


def accepts(port: int, host: str = HOST) -> bool:
    """Whether a connection to host:port is accepted now (the probe connection is closed
    at once). For ports that no socket listens on by that number, as in bpf steering."""
    with socket.socket() as s:
        s.settimeout(1)
        try:
            s.connect((host, port))
        except OSError:
            return False
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_LINGER)
        return True


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit to `wanted` (root may raise the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


# Idle connections held for the memory figure: 5,000, unless the open-file limit cannot
# be raised that far (a sandbox without CAP_SYS_RESOURCE): a proxy needs two descriptors
# per connection, and some to spare. Raised here, the limit is inherited by every process
# the benchmarks start.
FD_LIMIT = raise_nofile(1 << 17)
IDLE_CONNECTIONS = 200 if SMOKE else min(5_000, (FD_LIMIT - 400) // 2 // 100 * 100)


class ForeignCpu:
    """CPU time the machine spent on work other than this process and the children it
    waited for (every process the benchmarks start), from /proc/stat and getrusage:
    how much a neighbour's load may have skewed the figures. Busy time counts interrupt
    time too (the kernel may charge it to the task it interrupted); steal is reported on
    its own."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6]  # user..softirq
        ours = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            ours += usage.ru_utime + usage.ru_stime
        return busy / CLOCK_TICKS, ours, fields[7] / CLOCK_TICKS

    def seconds(self) -> tuple[float, float, float]:
        """(foreign CPU seconds, our CPU seconds, steal seconds) since construction."""
        busy, ours, steal = self._sample()
        ours -= self.start[1]
        return max(0.0, busy - self.start[0] - ours), ours, steal - self.start[2]
