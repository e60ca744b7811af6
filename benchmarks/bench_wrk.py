"""One HTTP load run with wrk, pinned to the client's CPU, against nginx through a
contender: a request rate, latency percentiles, errors, and the proxy's CPU around it."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from bench_procs import CLIENT_CPU, HOST, cpu_seconds

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    p50: float  # latency, seconds (--latency runs only, else 0)
    p99: float
    errors: int  # socket errors (connect, read, write, timeout) and non-2xx answers
    proxy_cpu: float | None  # utime + stime over the run, seconds

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_request(self) -> float | None:
        if self.proxy_cpu is None or not self.requests:
            return None
        return self.proxy_cpu * 1e6 / self.requests


def run_wrk(
    port: int,
    *,
    connections: int,
    seconds: float,
    close: bool,
    proxy_pid: int | None,
) -> Load:
    """wrk with one thread and `connections` connections for `seconds` against
    http://HOST:port/. `close`: every request on a new connection (`Connection: close`,
    which nginx honours by closing after its answer; wrk then reconnects)."""
    argv = wrk_argv(port, connections=connections, seconds=seconds, close=close)
    before = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    after = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    if out.returncode != 0:
        raise RuntimeError(f"wrk ({out.returncode}): {out.stderr or out.stdout}")
    return parse(out.stdout, after - before if proxy_pid else None)


def wrk_argv(port: int, *, connections: int, seconds: float, close: bool) -> list[str]:
    argv = ["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", f"-c{connections}"]
    argv += [f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, f"http://{HOST}:{port}/"]


def parse(text: str, proxy_cpu: float | None) -> Load:
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+),", text)
    if done is None:
        raise RuntimeError(f"wrk: no result in {text!r}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return Load(
        requests=int(done.group(1)),
        seconds=float(done.group(2)) * _UNITS[done.group(3)],
        p50=_percentile(text, "50%"),
        p99=_percentile(text, "99%"),
        errors=errors + (int(non_2xx.group(1)) if non_2xx else 0),
        proxy_cpu=proxy_cpu,
    )


def _percentile(text: str, which: str) -> float:
    found = re.search(rf"^\s*{which}\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    return float(found.group(1)) * _UNITS[found.group(2)] if found else 0.0
