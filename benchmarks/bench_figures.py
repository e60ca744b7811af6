"""The figures besides bulk throughput: what each table of RESULTS.md holds, filled in
by the tests as they run."""

from __future__ import annotations

from bench_procs import FD_LIMIT, IDLE_CONNECTIONS
from bench_report import Column, Figure

PORTS = 10_000
RELOAD_PORTS = 1_000
CONNECT_CONCURRENCY = 32  # wrk connections, each doing connect-request-answer-close
KEEPALIVE_CONCURRENCY = 32


def make_figures() -> dict[str, Figure]:
    return {
        "connect": Figure(
            "New connections per second",
            [
                f"wrk, 1 thread, {CONNECT_CONCURRENCY} connections, `Connection: close`: "
                "every request opens a new connection through the proxy to nginx, which "
                "answers `200 ok` and closes.",
                "errors: wrk's socket errors (connect, read, write, timeout) and non-2xx "
                "answers, per run.",
            ],
            [
                Column("conn/s", 0, ratios=True),
                Column("proxy CPU µs/conn", 1, lower_is_better=True),
                Column("errors", 0, lower_is_better=True),
            ],
        ),
        "keepalive": Figure(
            f"Keep-alive requests, {KEEPALIVE_CONCURRENCY} connections",
            [
                f"wrk, 1 thread, {KEEPALIVE_CONCURRENCY} keep-alive connections as fast as "
                "they go (`GET /`, 3-byte answer): the request rate and the latency under "
                "that load.",
            ],
            [
                Column("req/s", 0, ratios=True),
                Column("p50 µs", 0, lower_is_better=True),
                Column("p99 µs", 0, lower_is_better=True),
                Column("proxy CPU µs/req", 2, lower_is_better=True),
            ],
        ),
        "latency": Figure(
            "Small request/response latency, one at a time",
            [
                "wrk, 1 thread, 1 keep-alive connection: each request sent when the last "
                "answer arrived; p50 and p99 from wrk --latency. `added`: median minus the "
                "direct connection's, the latency the proxy adds.",
            ],
            [
                Column("p50 µs", 0, lower_is_better=True, ratios=True, added=True),
                Column("p99 µs", 0, lower_is_better=True, ratios=True, added=True),
                Column("req/s", 0),
            ],
        ),
        "idle": Figure(
            f"Memory per idle connection ({IDLE_CONNECTIONS:,} held)",
            [
                f"{IDLE_CONNECTIONS:,} connections opened through the proxy to a holder "
                "that accepts them and sends nothing; figures are (after - before) / "
                f"{IDLE_CONNECTIONS:,}, each repetition on a freshly started proxy.",
                "proxy RSS: VmRSS of the proxy process. kernel slab: Slab of /proc/meminfo, "
                "machine-wide (socket, file, epoll and pipe structures of the client, the "
                "proxy and the holder; anything else the machine allocated meanwhile too); "
                "`added` is the part beyond the direct connection's two sockets, i.e. the "
                "proxy's two sockets and their bookkeeping. TCP buffers: the `mem` pages of "
                "/proc/net/sockstat. pipes: pipe ends the proxy holds with all connections "
                "open.",
                "total: proxy RSS + kernel slab added, per connection.",
            ]
            + (
                []
                if IDLE_CONNECTIONS == 10_000
                else [
                    f"{IDLE_CONNECTIONS:,} rather than 10,000: the hard open-file limit here "
                    f"is {FD_LIMIT:,} and cannot be raised (no CAP_SYS_RESOURCE); a proxy "
                    "holds two descriptors per connection."
                ]
            ),
            [
                Column("proxy RSS B/conn", 0, lower_is_better=True, ratios=True),
                Column("kernel slab B/conn", 0, lower_is_better=True, added=True),
                Column("TCP buffers B/conn", 1, lower_is_better=True),
                Column("pipes held", 0, lower_is_better=True),
                Column("total B/conn", 0, lower_is_better=True, ratios=True),
            ],
        ),
        "ports": Figure(
            f"Start-up with {PORTS:,} ports",
            [
                f"One app on {PORTS:,} ports (a range); time from starting the process to "
                "every one of 20 sample ports (the first, the last and 18 between) "
                "accepting a connection, and the proxy's RSS then. bpf: one socket and an "
                "sk_lookup program (compiled by bcc at start-up); ports: one listening "
                "socket per port; HAProxy: `bind` on the same range.",
            ],
            [
                Column("start-up ms", 0, lower_is_better=True),
                Column("RSS MiB", 1, lower_is_better=True),
            ],
        ),
        "reload": Figure(
            f"Reload adding {RELOAD_PORTS:,} ports, under load",
            [
                f"While wrk opens connections (`Connection: close`, {CONNECT_CONCURRENCY} "
                f"at a time) to a port kept in both configs, the config gains an app with "
                f"{RELOAD_PORTS:,} new ports and `POST /reload` is sent. request: until the "
                "admin endpoint answers; accepting: until the last new port accepts a "
                "connection (probed every millisecond from the moment the request is sent). "
                "Each repetition first reloads back to the base config (not timed).",
                "new ports accepting: of the 1,000, checked after each reload. errors: wrk's "
                "socket errors over the whole series of reloads.",
            ],
            [
                Column("request ms", 1, lower_is_better=True),
                Column("accepting ms", 1, lower_is_better=True),
                Column("new ports accepting", 0),
                Column("load conn/s", 0),
                Column("errors", 0, lower_is_better=True),
            ],
        ),
    }
