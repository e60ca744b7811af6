"""The benchmarks' load generators, against real sockets: openloop's closed loop (the
many-connection cases) leaves its warm-up out of the counted window, and a server that
answers nothing is a failed figure that says so, never a division by zero or a NaN; the
load generator's own CPU share is a figure only where there was time to measure it."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_openloop import OPENLOOP, run_closed, run_openloop  # noqa: E402
from bench_summary import Case, Spread  # noqa: E402
from bench_wrk import client_share, parse  # noqa: E402
from report import CLIENT_BOUND, client_bound  # noqa: E402

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"


def serve(answer: bool) -> Iterator[int]:
    """A keep-alive HTTP server on loopback, a thread per connection; one that reads and
    never answers when `answer` is false."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def one(conn: socket.socket) -> None:
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                if answer:
                    conn.sendall(ANSWER * data.count(b"\r\n\r\n"))

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


@pytest.fixture
def answering() -> Iterator[int]:
    yield from serve(answer=True)


@pytest.fixture
def silent() -> Iterator[int]:
    yield from serve(answer=False)


@pytest.fixture(autouse=True)
def _openloop() -> None:
    if not OPENLOOP.exists():
        pytest.skip(f"{OPENLOOP} missing: run scripts/install-bench-deps.sh")


def closed(port: int, seconds: str, warmup: str) -> dict:
    argv = [str(OPENLOOP), "127.0.0.1", str(port), "4", "0", seconds, "/", warmup]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def test_closed_loop_counts_only_the_window_after_its_warm_up(answering: int) -> None:
    figures = closed(answering, "0.5", "0.3")
    assert figures["answered"] > 0 and figures["errors"] == 0
    # The warm-up's answers are not in the counted window, but were answered.
    assert figures["answered_total"] > figures["answered"]
    assert figures["seconds"] >= 0.49  # the counted window (its end may come late on a busy CPU)
    assert figures["rate"] == pytest.approx(figures["answered"] / figures["seconds"], rel=0.01)
    assert 0 < figures["p50_us"] <= figures["p99_us"] <= figures["max_us"]
    assert 0 <= figures["client_cpu_share"] <= 1.5


def test_a_server_that_answers_nothing_is_a_failed_figure_not_a_nan(silent: int) -> None:
    figures = closed(silent, "0.2", "0.1")  # the program itself: zeros, never NaN
    assert figures["answered"] == 0 and figures["rate"] == 0
    assert all(math.isfinite(v) for v in figures.values())
    with pytest.raises(RuntimeError, match="no answer came back"):
        run_closed(silent, seconds=0.2, warmup=0.1, connections=2, proxy_pid=None)
    with pytest.raises(RuntimeError, match="no answer came back"):
        run_openloop(silent, rate=100, seconds=0.2, connections=2)
    with pytest.raises(RuntimeError, match="no rate to offer"):
        run_openloop(silent, rate=0.0, seconds=0.2, connections=2)


def test_the_client_share_is_a_figure_only_with_time_to_measure() -> None:
    assert client_share(0.5, 0.0, 1) == {}
    assert client_share(0.9, 1.0, 1) == {"client_cpu_share": 0.9}
    assert client_share(1.0, 1.0, 2) == {"client_cpu_share": 0.5}


def test_the_report_names_where_the_load_generator_is_the_bottleneck() -> None:
    busy = Spread.of([0.5, CLIENT_BOUND + 0.05])
    cases = [
        Case("http-concurrent", {}, {"direct": {"client_cpu_share": busy}}),
        Case("http-keepalive", {}, {"direct": {"client_cpu_share": Spread.of([0.3])}}),
    ]
    (line,) = client_bound(cases)
    assert line.startswith("- http-concurrent, direct: the load generator used 0.73 [0.50-0.95]")
    assert client_bound(cases[1:])[0].startswith("- nowhere")


def test_a_wrk_run_of_no_time_is_an_error_not_a_division_by_zero() -> None:
    text = "  0 requests in 0.00us, 0.00B read\nRequests/sec:      0.00\n"
    with pytest.raises(RuntimeError, match="wrk: 0 requests in 0.00us: no rate"):
        parse(text)
    assert parse("  10 requests in 2.00s, 1.00KB read\n")["rate"] == 5.0
