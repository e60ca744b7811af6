"""One HTTP load run with wrk, pinned to the client's CPU, against nginx through a
contender: a request rate, latency percentiles, errors, the CPU around it, and how busy
wrk itself was (client_cpu_share: near 1, the load generator is the bottleneck)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time

from bench_procs import CLIENT_CPU, HOST, CpuMeter, cpu_figures

# The client has one CPU in this layout (bench_procs): one wrk thread is a thread per
# core. Whether it keeps up is measured, not assumed (client_cpu_share).
THREADS = 1

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def run_wrk(
    port: int,
    *,
    connections: int,
    seconds: float,
    close: bool = False,
    path: str = "/",
    proxy_pid: int | None,
    scheme: str = "http",
) -> tuple[dict[str, float], str]:
    """wrk with one thread and `connections` connections for `seconds` against
    SCHEME://HOST:port/path (https: over TLS, wrk's own OpenSSL client). `close`: every
    request on a new connection (`Connection: close`, which nginx honours by closing
    first; wrk then reconnects). Returns the figures and wrk's output."""
    argv = wrk_argv(
        port, connections=connections, seconds=seconds, close=close, path=path, scheme=scheme
    )
    meter = CpuMeter(proxy_pid)
    returncode, stdout, stderr, client = run_timed(argv, timeout=seconds + 60)
    proxy_cpu, shared_cpu = meter.stop()
    if returncode != 0:
        raise RuntimeError(f"wrk ({returncode}): {stderr or stdout}")
    figures = parse(stdout)
    if not figures["requests"]:  # a figure too (a proxy stalled), but with no latencies
        return {"rate": 0.0, "errors": figures["errors"]}, stdout
    cpu = {"proxy_cpu_us_per_req": proxy_cpu, "shared_cpu_us_per_req": shared_cpu}
    per_request, unmeasured = cpu_figures(cpu, figures["requests"], 1e6)
    notes = "".join(f"\nnot measured: {name}: {why}" for name, why in unmeasured.items())
    notes += f"\nwrk: {client[0]:.2f} CPU-s in {client[1]:.2f} s with {THREADS} thread(s)"
    share = client_share(*client, THREADS)
    return {**figures, **per_request, **share}, stdout + notes


def run_timed(argv: list[str], timeout: float) -> tuple[int, str, str, tuple[float, float]]:
    """Run argv to its end: (returncode, stdout, stderr, (its CPU seconds, wall seconds)),
    the CPU from its own rusage (wait4: the child alone, whatever else this process
    runs meanwhile)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), (usage.ru_utime + usage.ru_stime, wall)


def client_share(cpu: float, wall: float, threads: int) -> dict[str, float]:
    """The load generator's CPU time over the CPU it had (wall time × threads): near 1,
    it was the bottleneck. No figure for a run too short to tell (no wall time)."""
    if wall <= 0 or threads <= 0:
        return {}
    return {"client_cpu_share": cpu / (wall * threads)}


def wrk_seconds(seconds: float) -> int:
    """What wrk really runs for `seconds`: whole seconds only, at least 1."""
    return max(round(seconds), 1)


def wrk_argv(
    port: int,
    *,
    connections: int,
    seconds: float,
    close: bool = False,
    path: str = "/",
    scheme: str = "http",
) -> list[str]:
    threads = min(THREADS, connections)
    argv = ["taskset", "-c", str(CLIENT_CPU), "wrk", f"-t{threads}", f"-c{connections}"]
    argv += [f"-d{wrk_seconds(seconds)}s", "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, f"{scheme}://{HOST}:{port}{path}"]


def parse(text: str) -> dict[str, float]:
    """rate (requests/s), latency p50/p90/p99 and max in µs, errors (socket errors and non-2xx
    answers), requests, bytes read."""
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", text)
    if done is None:
        raise RuntimeError(f"wrk: no result in {text!r}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    requests = int(done.group(1))
    seconds = float(done.group(2)) * _UNITS[done.group(3)]
    if seconds <= 0:  # never a division by zero: an error that says what wrk reported
        raise RuntimeError(f"wrk: {requests} requests in {done.group(2)}{done.group(3)}: no rate")
    # "Latency   avg   stdev   max   +/- stdev"
    latency = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m)\s", text)
    return {
        "requests": requests,
        "rate": requests / seconds,
        "p50_us": _percentile(text, "50%") * 1e6,
        "p90_us": _percentile(text, "90%") * 1e6,
        "p99_us": _percentile(text, "99%") * 1e6,
        "max_us": float(latency.group(1)) * _UNITS[latency.group(2)] * 1e6 if latency else 0.0,
        "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
    }


def _percentile(text: str, which: str) -> float:
    found = re.search(rf"^\s*{which}\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    return float(found.group(1)) * _UNITS[found.group(2)] if found else 0.0
