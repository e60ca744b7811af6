"""TLS termination (SPEC §16, issue 22): fastproxy against HAProxy `bind ... ssl` and
nginx `stream` with `ssl` (bench_tls), one thread each, the same certificates, per key
type (ECDSA P-256, RSA 2048):

- full handshakes per second (no session offered) and resumed ones (each connection
  offers its slot's newest ticket; a round in which under 99 % resumed is an error),
  with benchmarks/tlsload.c, several connections in flight, the proxy's CPU per
  handshake beside the rate (what an operator pays, whoever the bottleneck was);
- bulk: one keep-alive TLS connection downloading 1 MiB answers from the backend
  (tlsload bulk): Gb/s and the proxy's CPU per GB;
- keep-alive requests per second over TLS (wrk over https, as the plain keep-alive case).

Every round records its load generator's CPU share (RESULTS.md flags those at 0.9 and
above) and what the handshake negotiated: the contenders must agree (same version,
cipher, group and key), or the case fails. Nothing here asserts a timing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench_backends import SIZES
from bench_config import SECONDS, SMOKE, WARMUP
from bench_series import run_series
from bench_tls import KEYS, NAMES, SMOKE_NAMES, TlsContenders, make_certificates, negotiated
from bench_tlsload import run_tlsload
from bench_wrk import run_wrk, wrk_seconds

# Handshakes in flight: enough that the proxy always has one to work on while others
# wait on the network or on its backend connect.
HANDSHAKE_CONNECTIONS = 16
KEEPALIVE_CONNECTIONS = 32  # as the plain http-keepalive case
BULK_PATH = f"/bytes/{SIZES[-1]}"
CASES = ("full", "resumed", "bulk", "keepalive")


@pytest.fixture(scope="module")
def tls_contenders(
    tmp_path_factory: pytest.TempPathFactory, backend_ports: tuple[int, int], nginx: None
) -> Iterator[TlsContenders]:
    certificates = make_certificates(tmp_path_factory.mktemp("certificates"))
    running = TlsContenders(tmp_path_factory.mktemp("tls"), backend_ports[0], certificates)
    try:
        yield running
    finally:
        running.stop_all()


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("case", CASES)
def test_tls(request, tls_contenders: TlsContenders, case: str, key: str, tmp_path: Path) -> None:
    names = tls_contenders.available(SMOKE_NAMES if SMOKE else NAMES)
    if not names:
        pytest.skip(f"no TLS contender runs here: {tls_contenders.unavailable}")
    seen: dict[str, set[str]] = {}
    info: dict = {"key": key}

    def measure(name: str) -> tuple[dict[str, float], str]:
        c = tls_contenders.get(name)
        port = c.ports[key]
        if case == "keepalive":
            return run_wrk(
                port,
                connections=KEEPALIVE_CONNECTIONS,
                seconds=SECONDS,
                proxy_pid=c.pid,
                scheme="https",
            )
        figures, out = run_tlsload(
            case,
            port,
            connections=1 if case == "bulk" else HANDSHAKE_CONNECTIONS,
            seconds=SECONDS,
            warmup=WARMUP,
            proxy_pid=c.pid,
            path=BULK_PATH,
        )
        seen.setdefault(name, set()).add(negotiated(out))
        agreed = {line for lines in seen.values() for line in lines}
        info["negotiated"] = "; ".join(sorted(agreed))
        return figures, out

    if case == "keepalive":
        info |= {"connections": KEEPALIVE_CONNECTIONS, "load": "wrk https"}
        info["seconds"] = wrk_seconds(SECONDS)
    else:
        connections = 1 if case == "bulk" else HANDSHAKE_CONNECTIONS
        load = "tlsload bulk, 1 MiB answers" if case == "bulk" else f"tlsload {case}"
        info |= {"connections": connections, "load": load, "seconds": SECONDS}
        info["warmup_seconds"] = WARMUP
    if tls_contenders.unavailable:
        info["left out"] = "; ".join(f"{n}: {why}" for n, why in tls_contenders.unavailable.items())
    run_series(request, f"tls-{case}-{key}", names, measure, info=info)
    differing = {line for lines in seen.values() for line in lines}
    assert len(differing) <= 1, f"the contenders negotiated differently: {seen}"
