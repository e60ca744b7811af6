"""The TLS benchmark's load generator (benchmarks/tlsload.c) against real TLS servers on
loopback (Python ssl, TLS 1.3): it counts full handshakes as full and resumed ones as
resumed, a server that gives no ticket is a failed resumed round that says so (never a
resumption rate made of full handshakes), bulk counts the bytes of whole answers; and
RESULTS.md's TLS section is made from the figures. `make bench-tls` runs the cases
themselves (the smoke of every benchmark, test_bench_smoke.py, runs them once)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_summary import Case, Spread  # noqa: E402
from bench_tls import make_certificates  # noqa: E402
from bench_tlsload import handshake_figures, run_tlsload  # noqa: E402
from tls_report import section  # noqa: E402

BODY = b"x" * 100_000
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory):
    return make_certificates(tmp_path_factory.mktemp("certs"))["ecdsa"]


def serve(certificate, *, tickets: int) -> Iterator[int]:
    """A TLS 1.3 server giving `tickets` tickets per handshake (0: none), a thread per
    connection: it answers each request with ANSWER and closes when the client does."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate.cert, certificate.key)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.num_tickets = tickets
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    stop = threading.Event()

    def one(conn: socket.socket) -> None:
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                while data := tls.recv(4096):
                    tls.sendall(ANSWER * data.count(b"\r\n\r\n"))
        except (OSError, ssl.SSLError):
            pass

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
def server(certificate) -> Iterator[int]:
    yield from serve(certificate, tickets=2)


@pytest.fixture
def ticketless(certificate) -> Iterator[int]:
    yield from serve(certificate, tickets=0)


def load(mode: str, port: int, **kw) -> tuple[dict[str, float], str]:
    options = {"connections": 4, "seconds": 0.5, "warmup": 0.2, "proxy_pid": None} | kw
    return run_tlsload(mode, port, **options)  # type: ignore[arg-type]


def test_full_handshakes_are_counted_and_none_resumes(server: int) -> None:
    figures, out = load("full", server)
    assert figures["handshakes_per_s"] > 0 and figures["resumed_share"] == 0
    assert figures["errors"] == 0
    assert 0 < figures["client_cpu_share"] <= 1.5
    assert figures["p50_us"] <= figures["p99_us"] <= figures["max_us"]
    assert '"version": "TLSv1.3"' in out and '"key": "EC-256"' in out


def test_resumed_handshakes_resume_each_ticket_once(server: int) -> None:
    figures, _ = load("resumed", server)
    assert figures["handshakes_per_s"] > 0 and figures["resumed_share"] == 1.0


def test_a_server_without_tickets_fails_the_resumed_round(ticketless: int) -> None:
    with pytest.raises(RuntimeError, match=r"only 0 of \d+ handshakes resumed"):
        load("resumed", ticketless)


def test_bulk_reads_whole_answers(server: int) -> None:
    figures, out = load("bulk", server, connections=1, path="/big")
    assert figures["gbit_per_s"] > 0 and figures["errors"] == 0
    assert '"answers": 0,' not in out


def test_nothing_listening_is_an_error_that_says_so() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(RuntimeError, match="no handshake in"):
            load("full", port, seconds=0.2, warmup=0)


RESULT = {"handshakes": 10, "resumed": 3, "errors": 0, "seconds": 1.0, "tickets": 0}
RESULT |= {"client_cpu_share": 0.5, "p50_us": 1, "p99_us": 2, "max_us": 3}
RESULT |= {"handshakes_total": 10, "bytes": 0, "bytes_total": 0, "gbit_per_s": 0}


def test_figures_refuse_a_full_round_that_resumed() -> None:
    with pytest.raises(RuntimeError, match="3 of 10 handshakes resumed"):
        handshake_figures(RESULT, "full")


def test_a_stalled_round_is_a_rate_of_0_without_latency_or_resumption() -> None:
    # A contender that got no CPU for the whole window (other work on its CPU): no
    # handshake and no error is a figure, as wrk's stalled rounds are; not a failure.
    for mode in ("full", "resumed"):
        figures = handshake_figures({**RESULT, "handshakes": 0, "resumed": 0}, mode)
        assert figures["handshakes_per_s"] == 0 and figures["errors"] == 0
        assert "p99_us" not in figures and "resumed_share" not in figures
    assert handshake_figures(RESULT, "bulk")["gbit_per_s"] == 0


def test_bad_arguments_are_one_line() -> None:
    from bench_tlsload import BINARY, ensure_built

    ensure_built()
    out = subprocess.run([str(BINARY), "sideways", "127.0.0.1", "1", "1", "1"], capture_output=True)
    assert out.returncode == 2 and out.stderr == b"tlsload: bad arguments\n"


def test_the_results_tls_section_judges_fastproxy_against_the_best_peer() -> None:
    def spread(*values: float) -> Spread:
        return Spread.of(list(values))

    full = Case(
        "tls-full-ecdsa",
        {"negotiated": "TLSv1.3 TLS_AES_256_GCM_SHA384 X25519 EC-256"},
        {
            "haproxy": {"handshakes_per_s": spread(900, 950), "client_cpu_share": spread(0.5)},
            "nginx-stream": {"handshakes_per_s": spread(1000, 1100)},
            "fastproxy-splice": {
                "handshakes_per_s": spread(1200, 1300),
                "client_cpu_share": spread(0.95),
            },
            "fastproxy-copy": {"handshakes_per_s": spread(1100, 1200)},
        },
        {
            "haproxy": {"handshakes_per_s": [900, 950]},
            "nginx-stream": {"handshakes_per_s": [1000, 1100]},
            "fastproxy-splice": {"handshakes_per_s": [1200, 1300]},
            "fastproxy-copy": {"handshakes_per_s": [1100, 1200]},
        },
    )
    bulk = Case(
        "tls-bulk-ecdsa",
        {},
        {
            "haproxy": {"proxy_cpu_ms_per_gb": spread(400, 420)},
            "nginx-stream": {"proxy_cpu_ms_per_gb": spread(380, 390)},
            "fastproxy-splice": {"proxy_cpu_ms_per_gb": spread(500, 520)},
            "fastproxy-copy": {"proxy_cpu_ms_per_gb": spread(450, 460)},
        },
    )
    text = "\n".join(section([full, bulk]))
    assert "## TLS termination" in text
    row = "| ecdsa | full | handshakes/s | 1,250 [1,200-1,300] | 1,150 [1,100-1,200] | 925"
    assert row in text
    assert "fastproxy-splice: 1.19× better than nginx-stream" in text  # 1,250 against 1,050
    assert "≥ 1.0× best peer: met (1.19×)" in text
    assert "better in 2 of 2 rounds" in text
    # Copy mode is fastproxy's best on CPU per GB: 385 against its 455 ms/GB.
    assert "fastproxy-copy: 0.85× worse than nginx-stream" in text
    assert "≤ 1.0× best peer: missed (0.85×)" in text
    assert "negotiated TLSv1.3 TLS_AES_256_GCM_SHA384 X25519 EC-256" in text
    assert "tls-full-ecdsa, fastproxy-splice: the load generator used 0.95" in text
    assert section([]) == []
