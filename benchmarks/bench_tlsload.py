"""The TLS load generator (benchmarks/tlsload.c, built into build/tlsload on first use):
full or resumed handshakes per second, or bulk downloads over TLS, closed loop, with
several connections in flight, on the client's CPU; the proxy's CPU per handshake or
per GB read around it (bench_procs.CpuMeter)."""

from __future__ import annotations

import json
import subprocess

from bench_config import HERE
from bench_procs import CLIENT_CPU, HOST, CpuMeter, cpu_figures

SOURCE = HERE / "tlsload.c"
BINARY = HERE.parent / "build" / "tlsload"
# A resumed case in which fewer handshakes than this share resumed measured something
# else (full handshakes): an error, not a figure.
RESUMED_AT_LEAST = 0.99


def ensure_built() -> None:
    """Build it when missing or older than its source (a fresh work tree has no build/)."""
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return
    BINARY.parent.mkdir(exist_ok=True)
    subprocess.run(
        ["cc", "-O2", "-Wall", "-Wextra", "-o", str(BINARY), str(SOURCE), "-lssl", "-lcrypto"],
        check=True,
    )


def run_tlsload(
    mode: str,
    port: int,
    *,
    connections: int,
    seconds: float,
    warmup: float,
    proxy_pid: int | None,
    path: str = "/",
) -> tuple[dict[str, float], str]:
    """One run of `mode` (full, resumed, bulk) against HOST:port: its figures and output.
    Handshake modes: handshakes/s, latency, resumed share, the proxy's CPU µs per
    handshake; bulk: Gb/s read and the proxy's CPU ms per GB. Each with the generator's
    own CPU share. A run whose connections all failed, or whose resumptions did not
    happen, raises; one in which the contender stalled (no handshake, no error: a CPU
    taken by other work) is a rate of 0, as wrk's stalled rounds are."""
    ensure_built()
    argv = ["taskset", "-c", str(CLIENT_CPU), str(BINARY), mode, HOST, str(port)]
    argv += [str(connections), f"{seconds:g}", f"{warmup:g}", path]
    meter = CpuMeter(proxy_pid)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=warmup + seconds + 60)
    proxy_cpu, shared_cpu = meter.stop()
    if out.returncode != 0:
        raise RuntimeError(f"tlsload ({out.returncode}): {out.stderr.strip()}")
    figures = handshake_figures(json.loads(out.stdout), mode)
    if mode == "bulk":
        cpu = {
            "proxy_cpu_ms_per_gb": proxy_cpu,
            "shared_cpu_ms_per_gb": shared_cpu,
            "all_cpu_ms_per_gb": meter.all_seconds,
        }
        # The CPU is read around the whole run, the warm-up too: per byte of the run.
        amount, scale = figures.pop("bytes_total") / 1e9, 1e3
    else:
        cpu = {"proxy_cpu_us_per_handshake": proxy_cpu, "shared_cpu_us_per_handshake": shared_cpu}
        amount, scale = figures.pop("handshakes_total"), 1e6
    per_unit, unmeasured = cpu_figures(cpu, amount, scale) if amount else ({}, {})
    notes = "".join(f"\nnot measured: {name}: {why}" for name, why in unmeasured.items())
    return {**figures, **per_unit}, out.stdout + notes


def handshake_figures(result: dict, mode: str) -> dict[str, float]:
    """The figures of one tlsload result; errors that say what went wrong where a run
    measured nothing, or not what it was meant to."""
    handshakes, resumed = int(result["handshakes"]), int(result["resumed"])
    errors, seconds = float(result["errors"]), float(result["seconds"])
    share = {"client_cpu_share": float(result["client_cpu_share"]), "errors": errors}
    done = int(result["bytes"]) if mode == "bulk" else handshakes
    if seconds <= 0 or (not done and errors):
        what = "byte read" if mode == "bulk" else "handshake"
        raise RuntimeError(f"tlsload {mode}: no {what} in {seconds:g} s ({errors:g} errors)")
    if mode == "bulk":  # its connections' handshakes were in the warm-up
        return {
            "gbit_per_s": float(result["gbit_per_s"]),
            "bytes_total": float(result["bytes_total"]),
            **share,
        }
    if not handshakes:  # stalled: a figure too, with no latency and no resumption
        total = float(result["handshakes_total"])
        return {"handshakes_per_s": 0.0, "handshakes_total": total, **share}
    if mode == "resumed" and resumed < RESUMED_AT_LEAST * handshakes:
        raise RuntimeError(
            f"tlsload resumed: only {resumed} of {handshakes} handshakes resumed a session"
            f" ({int(result['tickets'])} tickets received): not a resumption rate"
        )
    if mode == "full" and resumed:
        raise RuntimeError(f"tlsload full: {resumed} of {handshakes} handshakes resumed")
    return {
        "handshakes_per_s": handshakes / seconds,
        "resumed_share": resumed / handshakes,
        "p50_us": float(result["p50_us"]),
        "p99_us": float(result["p99_us"]),
        "max_us": float(result["max_us"]),
        "handshakes_total": float(result["handshakes_total"]),
        **share,
    }
