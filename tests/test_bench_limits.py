"""The peers' limits in the benchmarks follow the cases (issue 25, finding 1: HAProxy's
maxconn 7000 capped it in the 8,000-connection case): HAProxy's global and frontend
maxconn and nginx's worker_connections sit above the most connections any case holds
through them, within the open-file limit, and each peer starts with them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_config import CONCURRENT  # noqa: E402
from bench_contenders import SHARED_CONNECTIONS  # noqa: E402
from bench_peers import (  # noqa: E402
    haproxy_config,
    nginx_stream_config,
    start_haproxy,
    start_nginx_stream,
)
from bench_procs import FD_LIMIT, IDLE_CONNECTIONS, free_ports  # noqa: E402

ROUTES = [(20001, [20002]), (20003, [20004])]


def maxconns(config: str) -> tuple[int, int]:
    """(global maxconn, frontend maxconn from the defaults section)."""
    global_part, defaults = config.split("\ndefaults\n", 1)
    (first,) = re.findall(r"^\s+maxconn (\d+)$", global_part, re.M)
    (second,) = re.findall(r"^\s+maxconn (\d+)$", defaults.split("\nlisten ")[0], re.M)
    return int(first), int(second)


def test_the_shared_contenders_limits_cover_every_case() -> None:
    # Every case that runs through the contenders started once per session: the
    # concurrent HTTP case and the idle connections of the memory case.
    assert max(CONCURRENT, IDLE_CONNECTIONS) <= SHARED_CONNECTIONS
    for name in ("haproxy-splice", "haproxy-splice-auto", "haproxy-nosplice"):
        global_max, frontend_max = maxconns(
            haproxy_config(name, ROUTES, connections=SHARED_CONNECTIONS)
        )
        assert global_max > SHARED_CONNECTIONS and frontend_max > SHARED_CONNECTIONS
    nginx = nginx_stream_config(ROUTES, Path("/tmp"), connections=SHARED_CONNECTIONS)
    (workers,) = re.findall(r"worker_connections (\d+);", nginx)
    assert int(workers) > 2 * SHARED_CONNECTIONS  # two per proxied connection


@pytest.mark.parametrize("connections", [20, 8000])
def test_haproxy_maxconn_follows_the_case_and_haproxy_takes_it(
    connections: int, tmp_path: Path
) -> None:
    config = haproxy_config("haproxy-splice-auto", ROUTES, connections=connections)
    global_max, frontend_max = maxconns(config)
    assert connections < global_max == frontend_max
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy not installed (scripts/install-bench-deps.sh)")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    check = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_case_the_open_file_limit_cannot_hold_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=f"an open-file limit of {FD_LIMIT} holds"):
        haproxy_config("haproxy-nosplice", ROUTES, connections=FD_LIMIT)
    with pytest.raises(RuntimeError, match=f"an open-file limit of {FD_LIMIT} holds"):
        nginx_stream_config(ROUTES, Path("/tmp"), connections=FD_LIMIT)


@pytest.mark.parametrize("peer", ["haproxy", "nginx-stream"])
def test_the_peers_start_with_the_shared_limits(peer: str, tmp_path: Path) -> None:
    """HAProxy refuses to start when it cannot raise its own fd limit to what maxconn
    needs (a maxconn of 10,100 wanted 20,248 fds where the limit is 20,000): each peer
    is started as the benchmarks start it, for the shared contenders' connections."""
    if shutil.which("haproxy" if peer == "haproxy" else "nginx") is None:
        pytest.skip(f"{peer} not installed (scripts/install-bench-deps.sh)")
    front, back = free_ports(2)
    routes: list = [(front, [back])]
    try:
        if peer == "haproxy":
            proxy = start_haproxy(
                "haproxy-splice-auto", routes, tmp_path, connections=SHARED_CONNECTIONS
            )
        else:
            proxy = start_nginx_stream(routes, tmp_path, connections=SHARED_CONNECTIONS)
    except FileNotFoundError as exc:  # nginx's stream module missing
        pytest.skip(str(exc))
    try:
        proxy.wait_listening(front)
    finally:
        proxy.stop()
