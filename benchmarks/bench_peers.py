"""The peers' configurations, each tuned as its experts would for these loads (loopback,
one thread, bulk streams and small HTTP requests, client speaks first):
HAProxy 2.6 in TCP mode three ways and nginx's `stream` proxy."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from bench_procs import FD_LIMIT, HOST, SERVER_CPU, Pinned

# A route: the front port (or an HAProxy port range "10000-19999") and its backend ports.
Route = tuple[int | str, list[int]]

HAPROXY_MODES = {
    # Forced splice both ways: kernel zero copy for every transfer, even tiny ones.
    "haproxy-splice": "    option splice-request\n    option splice-response\n",
    # HAProxy's own heuristic: splice only once a buffer filled up (bulk), copy for
    # small messages, where a splice costs more syscalls than it saves copies.
    "haproxy-splice-auto": "    option splice-auto\n",
    "haproxy-nosplice": "",
}

HAPROXY_GLOBAL = """\
global
    # One thread, as fastproxy --workers {threads} and the one-loop Python proxies.
    nbthread {threads}
    # Above the most connections the case holds at once (connection_limit), here and per
    # frontend (defaults below): a peer is never capped below the load it is given.
    maxconn {maxconn}
    # Pipes (2 fds each) for what the limit leaves: HAProxy takes a pipe from its pool
    # only while data sits in it, and copies when none is free.
    maxpipes {maxpipes}
    # 64 KiB buffers (default 16 KiB): four times fewer recv/send calls per byte when
    # copying bulk data; HAProxy allocates a buffer only while data sits in it, so idle
    # connections do not pay for it.
    tune.bufsize 65536
    # 256 KiB pipes (default: the kernel's 64 KiB): more bytes per splice() call.
    tune.pipesize 262144
    # Accept up to 256 connections per wake-up (default 64 with one thread): the
    # connection-rate loads arrive in bursts from one client.
    tune.maxaccept 256
{extra}
defaults
    mode tcp
    maxconn {maxconn}
{splice}    # TCP_DEFER_ACCEPT: woken only once the client sent its first bytes (the
    # client speaks first in every load here, HTTP and iperf3).
    option tcp-smart-accept
    # The connect()'s final ACK goes out with the first data: one packet less.
    option tcp-smart-connect
    # A refused or dead server: try another (the dead-target case).
    option redispatch
    retries 3
    balance roundrobin
    timeout connect 5s
    timeout client 60s
    timeout server 60s
"""
HAPROXY_LISTEN = "\nlisten route{i}\n    bind {host}:{front}{bind}\n{servers}"


MIN_PIPES = 16
FD_SPARE = 200  # HAProxy's own descriptors (stats socket, logs, pollers) and slack


def connection_limit(connections: int) -> int:
    """A peer's connection limit for a case that holds `connections` at once through it:
    above that, with room for connections still closing (churn) and the harness's probes."""
    return connections + connections // 4 + 100


def haproxy_config(
    name: str,
    routes: list[Route],
    *,
    connections: int,
    threads: int = 1,
    stats: str = "",
    tls: dict[int | str, str] | None = None,
    tune: str = "",
) -> str:
    """`connections`: the most the case holds at once (global and frontend maxconn are
    set above it, as far as the open-file limit allows). `stats`: a stats socket path
    exposing the listeners, for a seamless reload. `tls`: front port -> the PEM file
    (certificate and key) that port terminates TLS with (`bind ... ssl crt`). `tune`:
    more global lines."""
    listeners = sum(_port_count(front) for front, _ in routes)
    # HAProxy refuses to start when it cannot raise its own fd limit to 2 per connection,
    # 2 per pipe, its listeners and a few more: the headroom stops at what the limit
    # holds (here 20,000 fds: 9,882 connections), never below the case's connections.
    room = (FD_LIMIT - listeners - 2 * MIN_PIPES - FD_SPARE) // 2
    if room < connections:
        raise RuntimeError(
            f"an open-file limit of {FD_LIMIT} holds {room} HAProxy connections, not the"
            f" case's {connections}: raise it (ulimit -Hn)"
        )
    maxconn = min(connection_limit(connections), room)
    extra = f"    stats socket {stats} mode 600 level admin expose-fd listeners\n" if stats else ""
    extra += tune
    maxpipes = min(4096, max(MIN_PIPES, (FD_LIMIT - 2 * maxconn - listeners - FD_SPARE) // 2))
    text = HAPROXY_GLOBAL.format(
        threads=threads,
        maxconn=maxconn,
        maxpipes=maxpipes,
        extra=extra,
        splice=HAPROXY_MODES[name],
    )
    for i, (front, backends) in enumerate(routes):
        servers = "".join(f"    server s{k} {HOST}:{port}\n" for k, port in enumerate(backends))
        ssl = f" ssl crt {tls[front]}" if tls and front in tls else ""
        text += HAPROXY_LISTEN.format(
            i=i, host=HOST, front=front, bind=f"{ssl} backlog 4096", servers=servers
        )
    return text


def _port_count(front: int | str) -> int:
    first, _, last = str(front).partition("-")
    return int(last or first) - int(first) + 1


def start_haproxy(
    name: str, routes: list[Route], workdir: Path, *, cpus: str = str(SERVER_CPU), **options
) -> Pinned:
    """HAProxy in the foreground without a master (-db): the pid is the one process
    doing the work."""
    if shutil.which("haproxy") is None:
        raise FileNotFoundError("haproxy not installed (scripts/install-bench-deps.sh)")
    path = workdir / "haproxy.cfg"
    path.write_text(haproxy_config(name, routes, **options))
    return Pinned(["haproxy", "-db", "-f", str(path)], cpus, workdir / "haproxy.log")


NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
NGINX_STREAM = """\
load_module {module};
daemon off;
# One process doing the work, as the other proxies.
master_process off;
worker_processes {workers};
worker_rlimit_nofile {fd_limit};
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{
    # Two per proxied connection, above the most the case holds (connection_limit), as
    # far as the open-file limit allows.
    worker_connections {worker_connections};
    # Take every pending connection per wake-up; with one worker there is nothing to
    # serialise accepts with.
    multi_accept on;
    accept_mutex off;
}}
stream {{
    # Small requests go out at once rather than waiting for Nagle's ACK.
    tcp_nodelay on;
    # 64 KiB per direction (default 16 KiB): fewer syscalls per byte in bulk.
    proxy_buffer_size 64k;
    proxy_connect_timeout 5s;
    proxy_timeout 60s;
    # A refused or dead server: the next one (the dead-target case).
    proxy_next_upstream on;
{servers}}}
"""
NGINX_SERVER = """\
    upstream route{i} {{
{upstreams}    }}
    server {{
        listen {host}:{front}{ssl} reuseport backlog=4096;
{certificate}        proxy_pass route{i};
    }}
"""


def nginx_stream_config(
    routes: list[Route],
    workdir: Path,
    *,
    connections: int,
    workers: int = 1,
    master: bool = False,
    tls: dict[int | str, tuple[str, str]] | None = None,
    stream: str = "",
) -> str:
    """`master`: a master process and `workers` worker processes (without it, nginx runs
    one process whatever `workers` says). `tls`: front port -> (certificate, key) files
    that port terminates TLS with (`listen ... ssl`). `stream`: more lines for the
    stream block."""
    servers = stream
    for i, (front, backends) in enumerate(routes):
        upstreams = "".join(f"        server {HOST}:{port};\n" for port in backends)
        ssl = certificate = ""
        if tls and front in tls:
            ssl = " ssl"
            cert, key = tls[front]
            certificate = f"        ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
        servers += NGINX_SERVER.format(
            i=i, host=HOST, front=front, ssl=ssl, certificate=certificate, upstreams=upstreams
        )
    room = FD_LIMIT - len(routes) - FD_SPARE
    if room < 2 * connections:
        raise RuntimeError(
            f"an open-file limit of {FD_LIMIT} holds {room // 2} nginx stream connections,"
            f" not the case's {connections}: raise it (ulimit -Hn)"
        )
    text = NGINX_STREAM.format(
        module=NGINX_STREAM_MODULE,
        workers=workers,
        fd_limit=FD_LIMIT,
        worker_connections=min(2 * connection_limit(connections), room),
        workdir=workdir,
        servers=servers,
    )
    return text.replace("master_process off;", "master_process on;") if master else text


def start_nginx_stream(
    routes: list[Route],
    workdir: Path,
    *,
    connections: int,
    workers: int = 1,
    cpus: str = str(SERVER_CPU),
    **options,
) -> Pinned:
    """`options`: nginx_stream_config's (`master`, TLS). Its pid: the one process doing
    the work without `master`, the master with it (bench_procs.cpu_seconds counts its
    workers too)."""
    if shutil.which("nginx") is None or not Path(NGINX_STREAM_MODULE).exists():
        raise FileNotFoundError("nginx stream module not installed (install-bench-deps.sh)")
    path = workdir / "nginx-stream.conf"
    text = nginx_stream_config(routes, workdir, connections=connections, workers=workers, **options)
    path.write_text(text)
    argv = ["nginx", "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(path)]
    return Pinned(argv, cpus, workdir / "nginx-stream.log")


NGINX_MANY_PORTS = """\
    upstream many {{
        server {host}:{backend};
    }}
    # One server with a `listen` per port: each a listening socket of its own, as in
    # HAProxy's bind on a port range.
    server {{
{listens}        proxy_pass many;
    }}
"""


def nginx_many_ports_config(
    ports: Sequence[int], backend: int, workdir: Path, *, connections: int, master: bool = False
) -> str:
    """nginx `stream` listening on every port of `ports`, all relayed to `backend`.
    Every listening socket takes one of the worker's connections: worker_connections is
    the listeners plus two per connection the case holds. `master`: a master process and
    one worker, which a reload (HUP) needs (a master-less nginx cannot open new ports)."""
    room = FD_LIMIT - len(ports) - FD_SPARE
    if room < 2 * connections:
        raise RuntimeError(
            f"an open-file limit of {FD_LIMIT} holds {room // 2} nginx stream connections"
            f" besides {len(ports)} listeners, not the case's {connections}: raise it"
        )
    listens = "".join(f"        listen {HOST}:{port} backlog=4096;\n" for port in ports)
    servers = NGINX_MANY_PORTS.format(host=HOST, backend=backend, listens=listens)
    text = NGINX_STREAM.format(
        module=NGINX_STREAM_MODULE,
        workers=1,
        fd_limit=FD_LIMIT,
        worker_connections=len(ports) + min(2 * connection_limit(connections), room),
        workdir=workdir,
        servers=servers,
    )
    if master:
        text = text.replace("master_process off;", "master_process on;")
    return text


def start_nginx_many_ports(
    ports: Sequence[int], backend: int, workdir: Path, *, connections: int, master: bool = False
) -> Pinned:
    """Its pid: the one process doing the work without `master`, the master with it."""
    if shutil.which("nginx") is None or not Path(NGINX_STREAM_MODULE).exists():
        raise FileNotFoundError("nginx stream module not installed (install-bench-deps.sh)")
    path = workdir / "nginx-stream.conf"
    path.write_text(
        nginx_many_ports_config(ports, backend, workdir, connections=connections, master=master)
    )
    argv = ["nginx", "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(path)]
    return Pinned(argv, str(SERVER_CPU), workdir / "nginx-stream.log")
