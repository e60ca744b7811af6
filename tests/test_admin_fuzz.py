"""Hostile bytes on the admin endpoint (issue 10, item 7): whatever arrives, the
answer is a well-formed 4xx (or the right 2xx), never a hang, a 5xx, a traceback in
the log, or a thread that stops."""

from __future__ import annotations

import random
import re
import socket
import struct
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyproc import Proxy, app, free_ports

STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def exchange(proxy: Proxy, data: bytes, timeout: float = 10) -> bytes:
    """Send everything, half-close, and read until the endpoint closes."""
    host, port = proxy.admin.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # it answered (and closed) before taking everything
            pass
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    return reply


def statuses(reply: bytes) -> list[int]:
    return [int(code) for code in STATUS_LINE.findall(reply)]


def assert_refused(reply: bytes, data: bytes) -> None:
    """Nothing, or answers of which the last is a 4xx and none a 5xx."""
    codes = statuses(reply)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 "), (data[:80], reply[:80])
    assert all(code < 500 for code in codes), (data[:80], reply[:200])
    if codes:
        assert 400 <= codes[-1] < 500, (data[:80], reply[:200])


def vanish(proxy: Proxy, request: bytes, read: int) -> None:
    """Send, read a little of the answer, then reset the connection."""
    host, port = proxy.admin.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(request)
    if read:
        sock.recv(read)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


GET = b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n"
HUGE_LINE = b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
MANY_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + b"a: b\r\n" * 10_000 + b"\r\n"
CHUNK = b"8000\r\n" + b"x" * 0x8000 + b"\r\n"
CHUNKED_TOO_BIG = (
    b"POST /reload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    + CHUNK * 2
    + b"1\r\nx\r\n0\r\n\r\n"
)
MALFORMED = [
    b"\x00\x01\x02garbage\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: localhost\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET  /healthz  HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b" /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /\xff\xfe HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"\r\n\r\n\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n: x\r\nHost: localhost\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: y\r\n\r\n",
    HUGE_LINE,
    MANY_HEADERS,
    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX: " + b"v" * 20_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nab",  # then EOF
    b"BREW /coffee HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET http://x/nope HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"GET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nPRI",
    b"POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"POST /reload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    CHUNKED_TOO_BIG,
]
# Content-Length that is not ASCII digits, negative, huge or contradictory
MALFORMED += [
    b"POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: %s\r\n\r\n{}" % value
    for value in ("١٢".encode(), "１０".encode(), b"\xff", b"-1", b"1e3", b"0x10", b"9" * 30)
    + (b"70000", b"2, 3", b"")
]


def test_hand_written_hostile_requests(tmp_path: Path) -> None:
    proxy = big_proxy(tmp_path)
    rng = random.Random(10)
    for size in (1, 7, 100, 5000, 70_000, 300_000):
        data = rng.randbytes(size)
        assert_refused(exchange(proxy, data), data)
    for data in MALFORMED:
        assert_refused(exchange(proxy, data), data)
    # Exact answers where the standard says what they are.
    assert statuses(exchange(proxy, HUGE_LINE)) == [431]
    assert statuses(exchange(proxy, MANY_HEADERS)) == [431]
    assert statuses(exchange(proxy, CHUNKED_TOO_BIG)) == [413]
    big_post = b"POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 70000\r\n\r\n"
    assert statuses(exchange(proxy, big_post + b"x" * 70_000)) == [413]
    # Pipelined: answered in order, the slow ones (on a worker) included, a HEAD's
    # answer without a body, then the junk refused.
    pipelined = (
        GET % b"/healthz" + GET % b"/status" + b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    reply = exchange(proxy, pipelined * 3 + GET % b"/nope" + b"junk\r\n\r\n")
    assert statuses(reply) == [200, 200, 200] * 3 + [404, 400]
    # Keep-alive is bounded: 100 answers, the last saying it closes.
    reply = exchange(proxy, GET % b"/healthz" * 150)
    assert statuses(reply) == [200] * 100
    assert reply.count(b"connection: close") + reply.count(b"Connection: close") == 1
    # Clients that vanish mid-response (a large /status, with a tiny receive buffer).
    for read in (0, 1, 1000):
        vanish(proxy, GET % b"/status", read)
        vanish(proxy, (GET % b"/status") * 5 + GET % b"/metrics", read)
    vanish(proxy, b"GET /status HTTP/1.1\r\nHost: localhost\r\n", 0)  # mid-request
    assert_still_serving(proxy)


request_lines = st.tuples(
    st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"", b"G\x00T"]) | st.binary(max_size=8),
    st.sampled_from([b"/healthz", b"/status", b"/reload", b"/targets/a/b/drain", b"*", b""])
    | st.binary(max_size=40),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b""])
    | st.binary(max_size=10),
).map(b" ".join)
headers = st.lists(
    st.tuples(
        st.sampled_from(
            [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Origin"]
            + [b"Authorization", b"Expect", b"Upgrade"]
        )
        | st.binary(max_size=12),
        st.sampled_from([b"x", b"0", b"5", b"chunked", b"close", b"100-continue", b"Bearer x"])
        | st.binary(max_size=24),
    ).map(b": ".join),
    max_size=6,
)
messages = st.builds(
    lambda line, hs, eol, body: line + eol + b"".join(h + eol for h in hs) + eol + body,
    request_lines,
    headers,
    st.sampled_from([b"\r\n", b"\n", b"\r"]),
    st.binary(max_size=64),
)
streams = st.tuples(st.lists(messages, min_size=1, max_size=3), st.integers(0, 10_000)).map(
    lambda t: b"".join(t[0])[: t[1]]  # and cut anywhere
)


def test_fuzzed_requests(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    proxy = Proxy(tmp_path, {"Apps": [app("a", [port], ["127.0.0.1:9"])]})

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        derandomize=True,  # the same examples on every run: a CI failure reproduces
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(streams)
    def one(data: bytes) -> None:
        reply = exchange(proxy, data)
        assert reply == b"" or reply.startswith(b"HTTP/1.1 "), (data, reply[:80])
        assert all(code < 500 for code in statuses(reply)), (data, reply[:200])

    started = time.monotonic()
    one()
    print(f"300 fuzzed exchanges in {time.monotonic() - started:.1f}s")
    assert_still_serving(proxy)


def big_proxy(tmp_path: Path) -> Proxy:
    """A proxy whose /status is large (1,000 targets): a response that takes many
    writes to a slow reader."""
    ports = free_ports(50)
    quiet = {"Interval": 3600}
    apps = [
        app(
            f"app{i}", [port], [f"127.0.0.{1 + t}:{9000 + i}" for t in range(20)], HealthCheck=quiet
        )
        for i, port in enumerate(ports)
    ]
    return Proxy(tmp_path, {"Apps": apps})


def assert_still_serving(proxy: Proxy) -> None:
    """Every thread of the endpoint still works: the loop (/healthz), the read worker
    (/status), the write worker (an authorized POST); and nothing went to the log
    that should not have."""
    assert proxy.http("GET", "/healthz") == (200, b"ok\n")
    assert proxy.http("GET", "/status")[0] == 200
    assert proxy.http("POST", "/reload")[0] == 200
    log = proxy.log()
    for bad in ("Traceback", "unexpected", "ERROR", "internal error"):
        assert bad not in log, log[-3000:]
    assert proxy.stop() == 0
