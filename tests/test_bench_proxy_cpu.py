"""The benchmarks charge a proxy with the CPU of all its processes (issue 25, headline
figures: the proxy's own CPU per GB, per request and per connection): a master's
workers, and a child that exited and was reaped during the run. Counting the process
started alone (an nginx or HAProxy master, which relays nothing) would read about 0."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_backends import start_nginx  # noqa: E402
from bench_peers import start_nginx_stream  # noqa: E402
from bench_procs import HOST, CpuMeter, free_ports, process_cpu_seconds  # noqa: E402


def children_of(pid: int) -> list[int]:
    """Found with pgrep, not with the harness's own process walk under test."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in out.stdout.split()]


def test_an_nginx_master_is_charged_with_both_its_workers(tmp_path: Path) -> None:
    for tool in ("nginx", "wrk", "pgrep"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (scripts/install-bench-deps.sh)")
    front, back = free_ports(2)
    server = start_nginx(back, tmp_path / "backend")
    try:
        (tmp_path / "proxy").mkdir()
        try:
            proxy = start_nginx_stream(
                [(front, [back])], tmp_path / "proxy", connections=64, workers=2, master=True
            )
        except FileNotFoundError as exc:  # nginx's stream module missing
            pytest.skip(str(exc))
        try:
            proxy.wait_listening(front)
            deadline = time.monotonic() + 10
            while len(workers := children_of(proxy.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(workers) == 2, f"nginx started workers {workers}"
            meter = CpuMeter(proxy.pid)
            before = {pid: process_cpu_seconds(pid) for pid in (proxy.pid, *workers)}
            # 16 keep-alive connections over the workers' reuseport listeners: both get
            # some (all on one of the two: a chance of 2 in 65,536). Seconds of load until
            # each worker has a few clock ticks (fewer on a machine busy with other work).
            for _ in range(8):
                subprocess.run(
                    ["wrk", "-t1", "-c16", "-d1s", f"http://{HOST}:{front}/"],
                    capture_output=True,
                    timeout=30,
                    check=True,
                )
                spent = {pid: process_cpu_seconds(pid) - t for pid, t in before.items()}
                if min(spent[w] for w in workers) >= 0.05:
                    break
            charged, _ = meter.stop()
        finally:
            proxy.stop()
    finally:
        server.stop()
    assert all(spent[w] >= 0.02 for w in workers), f"a worker did no work: {spent}"
    # Read around the processes' own figures: the meter's covers all of them.
    assert charged is not None
    assert charged >= sum(spent.values()) - 1e-9, (charged, spent)
    assert charged > spent[proxy.pid] + max(spent[w] for w in workers), (charged, spent)


def test_a_child_that_exits_during_the_run_is_still_charged() -> None:
    """A worker that ends (a reload's old worker) moves into its parent's cutime/cstime
    once reaped: still counted."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    script = f"read go; {sys.executable} -c '{burn}'; echo done; read stop"
    parent = subprocess.Popen(
        ["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        meter = CpuMeter(parent.pid)
        assert parent.stdin is not None and parent.stdout is not None
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == "done\n"  # the child burned, exited, was reaped
        assert children_of(parent.pid) == []
        charged, _ = meter.stop()
    finally:
        parent.kill()
        parent.wait()
    assert charged is not None and charged >= 0.25, charged
