"""Whole-system figures for one bulk load (iperf3, time-bounded) through one proxy:
Gbit/s, the proxy's own CPU per GB (utime+stime), TCP counters per GB (/proc/net/netstat
and /proc/net/snmp of this network namespace: what `nstat` reads), the sizes of the
segments on the proxy->server leg (tcpdump, ~1 s), and optionally `perf record -a` by
CPU. Not part of the suite: issue 25 finding 9. As root, in a namespace of its own:

    unshare --net sh -c 'ip link set lo up && .venv/bin/python \\
        benchmarks/splice_vs_copy.py fastproxy-splice fastproxy-copy --streams 1 --rounds 3'

CONTENDER is haproxy-splice, haproxy-nosplice, haproxy-splice-auto, fastproxy-copy,
fastproxy-splice, with options after colons: `pipe=262144` (fastproxy's PipeSize,
default the kernel's 64 KiB), `src=/path/to/src` (a fastproxy tree built elsewhere, run
from there: the baseline of an A/B), `tag=name`. Contenders run round-robin, so each
round's figures are back-to-back pairs."""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from bench_contenders import fastproxy_config, start_fastproxy, start_proxy
from bench_peers import HAPROXY_MODES
from bench_procs import (
    CLIENT_CPU,
    HOST,
    SERVER_CPU,
    Pinned,
    cpu_busy_seconds,
    cpu_seconds,
    free_ports,
)

SYSCALLS = [
    f"syscalls:sys_enter_{name}"
    for name in ("splice", "recvfrom", "sendto", "epoll_wait", "epoll_ctl", "setsockopt")
]
COUNTERS = (
    "vmstat:pgalloc",
    "vmstat:pgfree",
    "Tcp:InSegs",
    "Tcp:OutSegs",
    "TcpExt:TCPOrigDataSent",
    "TcpExt:TCPDelivered",
    "TcpExt:TCPAutoCorking",
    "TcpExt:TCPBacklogCoalesce",
    "TcpExt:TCPRcvCoalesce",
    "TcpExt:DelayedACKs",
    "TcpExt:TCPHPHits",
    "TcpExt:TCPHPAcks",
    "TcpExt:TCPPureAcks",
    "TcpExt:TCPBacklogDrop",
    "TcpExt:TCPRcvQDrop",
    "TcpExt:TCPWantZeroWindowAdv",
    "TcpExt:TCPToZeroWindowAdv",
    "TcpExt:TCPFromZeroWindowAdv",
    "TcpExt:PruneCalled",
    "TcpExt:TCPRcvCollapsed",
    "TcpExt:TCPOFOQueue",
)


def counters() -> dict[str, int]:
    """This namespace's SNMP and TcpExt counters (what nstat shows), and the machine's
    page allocations (/proc/vmstat: every tenant's, so compare pairs only)."""
    values: dict[str, int] = {}
    vmstat = dict(line.split() for line in Path("/proc/vmstat").read_text().splitlines())
    values["vmstat:pgalloc"] = sum(int(v) for k, v in vmstat.items() if k.startswith("pgalloc_"))
    values["vmstat:pgfree"] = int(vmstat["pgfree"])
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = Path(path).read_text().splitlines()
        for head, row in zip(lines[::2], lines[1::2], strict=True):
            prefix, names = head.split(":", 1)
            for name, value in zip(names.split(), row.split(":", 1)[1].split(), strict=True):
                values[f"{prefix}:{name}"] = int(value)
    return values


def switches(pid: int) -> int:
    """Context switches of the process's threads so far (voluntary and not)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.endswith("ctxt_switches:") or "ctxt_switches" in line:
                total += int(line.split()[1])
    return total


def idle_seconds() -> list[float]:
    """Idle time of each CPU so far (idle + iowait of its /proc/stat line)."""
    rows = [ln.split() for ln in Path("/proc/stat").read_text().splitlines()]
    ticks = os.sysconf("SC_CLK_TCK")
    return [(int(r[4]) + int(r[5])) / ticks for r in rows if re.fullmatch(r"cpu\d+", r[0])]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def segment_sizes(pcap: Path, port: int) -> dict[str, object]:
    """Sizes of the data segments sent to `port` (the proxy->server leg), as tcpdump
    saw them on lo (GSO super-segments, up to 64 KiB, before segmentation)."""
    out = subprocess.run(
        ["tcpdump", "-nn", "-r", str(pcap), f"tcp dst port {port}"],
        capture_output=True,
        text=True,
    ).stdout
    sizes = [int(m.group(1)) for m in re.finditer(r"length (\d+)", out)]
    sizes = [s for s in sizes if s > 0]
    if not sizes:
        return {"segments": 0}
    buckets = collections.Counter()
    for s in sizes:
        for bound in (1448, 4096, 16384, 32768, 65483, 1 << 30):
            if s <= bound:
                buckets[bound] += 1
                break
    sizes.sort()
    return {
        "segments": len(sizes),
        "mean": sum(sizes) / len(sizes),
        "p50": sizes[len(sizes) // 2],
        "p10": sizes[len(sizes) // 10],
        "full_mss_share": sum(1 for s in sizes if s >= 65483) / len(sizes),
        "buckets": {f"<={b}": buckets[b] for b in sorted(buckets)},
    }


def start(spec: str, iperf_front: int, iperf_back: int, work: Path) -> Pinned:
    name, *opts = spec.split(":")
    options = dict(o.split("=", 1) for o in opts)
    routes = [(iperf_front, [iperf_back])]
    if name in HAPROXY_MODES:
        return start_proxy(name, routes, work, connections=100)
    config = fastproxy_config({"app0": ([iperf_front], [iperf_back])}, "ports")
    config.pop("PipeSize")
    if "pipe" in options:
        config["PipeSize"] = int(options["pipe"])
    env = {"PYTHONPATH": options["src"]} if "src" in options else None
    relay = "copy" if name == "fastproxy-copy" else "splice"
    proxy = start_fastproxy(config, work, "--relay", relay, env=env)
    proxy.wait_listening(iperf_front)
    return proxy


def syscall_counts(pid: int, seconds: float, out: Path) -> str:
    """strace -c -f on the proxy for `seconds` (does it really splice?)."""
    proc = subprocess.Popen(
        ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(seconds)
    proc.send_signal(2)
    proc.wait(30)
    return out.read_text()


def run_one(spec: str, args: argparse.Namespace, work: Path, tag: str) -> dict[str, object]:
    iperf_front, iperf_back = free_ports(2)
    proxy = start(spec, iperf_front, iperf_back, work)
    server = Pinned(
        ["iperf3", "-s", "-1", "-B", HOST, "-p", str(iperf_back)],
        SERVER_CPU,
        work / "iperf3-server.log",
    )
    extra: dict[str, object] = {}
    try:
        server.wait_listening(iperf_back)
        load = loadavg()
        before = counters()
        cpu0, shared0, all0 = (
            cpu_seconds(proxy.pid),
            cpu_busy_seconds(SERVER_CPU),
            cpu_busy_seconds(None),
        )
        client = subprocess.Popen(
            ["taskset", "-c", str(CLIENT_CPU), "iperf3", "-c", HOST, "-p", str(iperf_front)]
            + ["-t", str(args.seconds), "-P", str(args.streams), "-J"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started = time.monotonic()
        time.sleep(0.5)
        # Each process's CPU over a window inside the run, set against the bytes the
        # server's intervals counted in it: the client and server, and the proxy.
        pids = {"proxy": proxy.pid, "server": server.pid, "client": client.pid}
        window = [time.monotonic() - started, {k: cpu_seconds(p) for k, p in pids.items()}]
        switched, idle = {k: switches(p) for k, p in pids.items()}, idle_seconds()
        stat = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", ",".join(SYSCALLS), "-p", str(proxy.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(min(1.0, args.seconds / 4))
        if args.capture:
            pcap = work / f"{tag}.pcap"
            dump = subprocess.Popen(
                ["tcpdump", "-i", "lo", "-s", "96", "-w", str(pcap), f"tcp port {iperf_back}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
            dump.send_signal(2)
            dump.wait(10)
            extra["sizes"] = segment_sizes(pcap, iperf_back)
            pcap.unlink()
        if args.strace:
            extra["strace"] = syscall_counts(proxy.pid, 1.0, work / f"{tag}.strace")
        if args.perf:
            data = work / f"{tag}.perf.data"
            subprocess.run(
                ["perf", "record", "-a", "-g", "-e", "cpu-clock", "-o", str(data)]
                + ["--", "sleep", "2"],
                capture_output=True,
            )
            # Other tenants of a shared machine show up in -a: the whole picture by
            # CPU and command, then the symbols of the processes of this run only.
            for key, options in (
                ("perf", ["--sort", "cpu,comm", "--percent-limit", "0.5"]),
                (
                    "perf_symbols",
                    ["--sort", "cpu,comm,sym", "--percent-limit", "0.15"]
                    + ["--comms", "iperf3,fp-worker-0,haproxy,ksoftirqd/0,ksoftirqd/1"],
                ),
            ):
                report = subprocess.run(
                    ["perf", "report", "-i", str(data), "--stdio", "--no-children"]
                    + ["-g", "none", *options],
                    capture_output=True,
                    text=True,
                ).stdout
                extra[key] = "\n".join(ln for ln in report.splitlines() if "%" in ln)
            data.unlink()
        time.sleep(max(0.0, args.seconds - 0.4 - (time.monotonic() - started)))
        window += [time.monotonic() - started, {k: cpu_seconds(p) for k, p in pids.items()}]
        switched = {k: switches(p) - switched[k] for k, p in pids.items()}
        idle = [b - a for a, b in zip(idle, idle_seconds(), strict=True)]
        stat.send_signal(2)
        counted = stat.communicate(timeout=30)[1]
        stdout, stderr = client.communicate(timeout=args.seconds + 60)
        cpu = cpu_seconds(proxy.pid) - cpu0
        shared = cpu_busy_seconds(SERVER_CPU) - shared0
        everything = cpu_busy_seconds(None) - all0
        after = counters()
        server.proc.wait(10)
    finally:
        server.stop()
        proxy.stop()
    report = json.loads(stdout)
    end = report["end"]
    t0, cpu_a, t1, cpu_b = window
    window_bytes = 0.0
    for interval in report["intervals"]:
        lo, hi = interval["sum"]["start"], interval["sum"]["end"]
        overlap = max(0.0, min(hi, t1) - max(lo, t0))
        if hi > lo:
            window_bytes += interval["sum"]["bytes"] * overlap / (hi - lo)
    own = {f"{k}_ms_per_gb": (cpu_b[k] - cpu_a[k]) * 1e12 / window_bytes for k in pids}
    calls = {}
    for line in counted.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit():
            calls[fields[2].split("sys_enter_")[-1]] = int(fields[0]) * 1e9 / window_bytes
    received = int(end["sum_received"]["bytes"])
    gb = received / 1e9
    result: dict[str, object] = {
        "contender": spec,
        "streams": args.streams,
        "load": load,
        "gbit_per_s": gb * 8 / float(end["sum_received"]["seconds"]),
        "proxy_ms_per_gb": cpu * 1e3 / gb,
        "shared_cpu_ms_per_gb": shared * 1e3 / gb,
        "all_cpu_ms_per_gb": everything * 1e3 / gb,
        "window": own,
        "switches_per_gb": {k: v * 1e9 / window_bytes for k, v in switched.items()},
        "idle_share": [i / (t1 - t0) for i in idle],
        "syscalls_per_gb": calls,
        "per_gb": {k: (after.get(k, 0) - before.get(k, 0)) / gb for k in COUNTERS},
        **extra,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("contenders", nargs="+")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--capture", action="store_true", help="tcpdump the server leg")
    parser.add_argument("--perf", action="store_true", help="perf record -a, 2 s")
    parser.add_argument("--strace", action="store_true", help="strace -c the proxy, 1 s")
    parser.add_argument("--out", type=Path, help="append JSON lines here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="splice-vs-copy-"))
    for rnd in range(args.rounds):
        for i, spec in enumerate(args.contenders):
            tag = f"r{rnd}-{i}"
            result = run_one(spec, args, work, tag)
            result["round"] = rnd
            line = json.dumps(result)
            if args.out:
                with args.out.open("a") as f:
                    f.write(line + "\n")
            pg = result["per_gb"]
            assert isinstance(pg, dict)
            print(
                f"r{rnd} {spec:<40} P{args.streams} load {result['load']:.2f}"
                f" {result['gbit_per_s']:6.2f} Gb/s proxy {result['proxy_ms_per_gb']:6.1f} ms/GB"
                f" cpu1 {result['shared_cpu_ms_per_gb']:6.1f}"
                f" all {result['all_cpu_ms_per_gb']:6.1f}"
                f" out/GB {pg['Tcp:OutSegs']:.0f} cork/GB {pg['TcpExt:TCPAutoCorking']:.0f}"
                f" dack/GB {pg['TcpExt:DelayedACKs']:.1f} window ms/GB "
                + " ".join(f"{k[:-9]} {v:.0f}" for k, v in result["window"].items()),
                flush=True,
            )
    os.rmdir(work) if not any(work.iterdir()) else None


if __name__ == "__main__":
    main()
