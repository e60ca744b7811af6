"""What AcceptProxyProtocol, ServerNames, MaxConnectionsPerSource, AccessLog and
admission control (Allow / Deny, MaxConnectionRate, MaxConnectionRatePerSource; Deny
with 10,000 entries, at accept and in the sk_lookup program) cost in new connections
per second: wrk (one request per connection) through fastproxy to nginx, each feature
against the same proxy without it, interleaved in rounds.

    python benchmarks/feature_cost.py [SECONDS] [ROUNDS]      (defaults 5, 3)

The bpf variants need root and a network namespace of their own (one fastproxy owns
steering per namespace): run it as `unshare --net sh -c 'ip link set lo up; python ...'`.

Bounded (variants x rounds x SECONDS of load) and stand-alone: it starts and stops its
own nginx and proxies, and prints one line per variant with the median rate."""

from __future__ import annotations

import ipaddress
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_peers import connection_limit
from bench_procs import HOST, cpu_seconds, free_ports
from bench_wrk import parse

CONCURRENCY = 32
NGINX = """\
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    server {{ listen {host}:{http} backlog=4096; location / {{ return 200 "ok\\n"; }} }}
    server {{
        listen {host}:{https} ssl backlog=4096;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""
# wrk cannot send a PROXY header: HAProxy in front does, for both sides of that pair.
HAPROXY = """\
global
    maxconn {maxconn}
defaults
    mode tcp
    maxconn {maxconn}
    timeout connect 5s
    timeout client 30s
    timeout server 30s
listen front
    bind {host}:{port}
    server proxy {host}:{target}{send_proxy}
"""


def deny_list(count: int) -> list[str]:
    """`count` networks none of which holds the client (127.0.0.1): /32s, /24s and
    IPv6 /64s, in the proportions of a blocklist, drawn with a fixed seed."""
    rng = random.Random(19)
    nets: set[str] = set()
    while len(nets) < count:
        kind = rng.random()
        if kind < 0.6:
            nets.add(f"{ipaddress.IPv4Address(rng.randrange(0x0B000000, 0x7E000000))}/32")
        elif kind < 0.9:
            nets.add(str(ipaddress.ip_network(f"{rng.randrange(128, 223)}.{rng.randrange(256)}."
                                              f"{rng.randrange(256)}.0/24")))  # fmt: skip
        else:
            nets.add(f"2001:db8:{rng.randrange(65536):x}:{rng.randrange(65536):x}::/64")
    return sorted(nets)


def admission_variants(plain: dict) -> dict[str, tuple[dict, str, bool | None]]:
    unlimited = 1_000_000  # the bucket never runs dry: the cost of keeping it
    return {
        "http + Allow + Deny (1 entry each)": (
            {**plain, "Allow": ["127.0.0.0/8"], "Deny": ["192.0.2.0/24"]}, "http", None),
        "http + Deny 10,000 (at accept)": ({**plain, "Deny": deny_list(10_000)}, "http", None),
        "http + MaxConnectionRate": ({**plain, "MaxConnectionRate": unlimited}, "http", None),
        "http + MaxConnectionRatePerSource": (
            {**plain, "MaxConnectionRatePerSource": unlimited}, "http", None),
    }  # fmt: skip


BPF_VARIANTS = ("bpf: http", "bpf: http + Deny 10,000 (sk_lookup + accept)")


def start_bpf_proxy(d: Path, http: int) -> tuple[subprocess.Popen, list[int]]:
    """One proxy with bpf steering and two apps, with and without the deny list."""
    ports = free_ports(2)
    plain = {"Targets": [f"{HOST}:{http}"]}
    apps = [
        {"Name": "bpf", "Ports": [ports[0]], **plain},
        {"Name": "bpf-deny", "Ports": [ports[1]], **plain, "Deny": deny_list(10_000)},
    ]
    config = {"Apps": apps, "Workers": 1, "Steering": "bpf", "Listen": HOST,
              "Admin": f"{HOST}:0"}  # fmt: skip
    path = d / "bpf.json"
    path.write_text(json.dumps(config))
    log = open(d / "bpf.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "fastproxy", "serve", str(path),
                             "--control-socket", str(d / "bpf.sock")],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 120  # the first start compiles the program
    while b"serving" not in (d / "bpf.log").read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((d / "bpf.log").read_text())
        time.sleep(0.05)
    if b"steering=bpf" not in (d / "bpf.log").read_bytes():
        raise RuntimeError("no bpf steering: " + (d / "bpf.log").read_text())
    return proc, ports


def variants(http: int, https: int, d: Path) -> dict[str, tuple[dict, str, bool | None]]:
    """name -> (app settings, scheme, behind HAProxy: None no, else with send-proxy?)"""
    plain = {"Targets": [f"{HOST}:{http}"]}
    tls = {"Targets": [f"{HOST}:{https}"]}
    return {
        "http": (plain, "http", None),
        "http + AccessLog": ({**plain, "access_log": str(d / "access.log")}, "http", None),
        "http + MaxConnectionsPerSource": (
            {**plain, "MaxConnectionsPerSource": 100000}, "http", None),
        "haproxy > http": (plain, "http", False),
        "haproxy > http + AcceptProxyProtocol": (
            {**plain, "AcceptProxyProtocol": True}, "http", True),
        "https": (tls, "https", None),
        "https + ServerNames": ({**tls, "ServerNames": [HOST]}, "https", None),  # wrk's SNI
        **admission_variants(plain),
    }  # fmt: skip


def start_proxy(d: Path, name: str, settings: dict) -> tuple[subprocess.Popen, int]:
    (port,) = free_ports(1)
    settings = dict(settings)
    access_log = settings.pop("access_log", None)
    config = {"Apps": [{"Name": "bench", "Ports": [port], **settings}], "Workers": 1,
              "Steering": "ports", "Listen": HOST, "Admin": f"{HOST}:0"}  # fmt: skip
    if access_log:
        config["AccessLog"] = access_log
    path = d / f"{abs(hash(name))}.json"
    path.write_text(json.dumps(config))
    log = open(d / f"{abs(hash(name))}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "fastproxy", "serve", str(path),
                             "--control-socket", str(d / f"{abs(hash(name))}.sock")],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 15
    while b"serving" not in (d / f"{abs(hash(name))}.log").read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((d / f"{abs(hash(name))}.log").read_text())
        time.sleep(0.05)
    return proc, port


def start_haproxy(d: Path, target: int, send_proxy: bool) -> tuple[subprocess.Popen, int]:
    (port,) = free_ports(1)
    config = d / f"haproxy-{port}.cfg"
    config.write_text(HAPROXY.format(host=HOST, port=port, target=target,
                                     maxconn=connection_limit(CONCURRENCY),
                                     send_proxy=" send-proxy" if send_proxy else ""))  # fmt: skip
    proc = subprocess.Popen(["haproxy", "-f", str(config)])
    time.sleep(0.5)
    return proc, port


def run(port: int, scheme: str, seconds: float, pid: int) -> tuple[float, float]:
    """(new connections/s, CPU µs of the fastproxy process per connection)"""
    argv = ["wrk", "-t1", f"-c{CONCURRENCY}", f"-d{seconds:g}s", "--timeout", "5s"]
    argv += ["-H", "Connection: close"]
    before = cpu_seconds(pid)
    out = subprocess.run([*argv, f"{scheme}://{HOST}:{port}/"], capture_output=True,
                         text=True, timeout=seconds + 30)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"wrk ({out.returncode}): {out.stderr or out.stdout}")
    cpu = cpu_seconds(pid) - before
    figures = parse(out.stdout)
    if not figures["requests"] or figures["errors"] > figures["requests"] // 100:
        raise RuntimeError(f"{figures['errors']} errors: {out.stdout}")
    return figures["rate"], cpu * 1e6 / figures["requests"]


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    seconds = float(args[0]) if args else 5.0
    rounds = int(args[1]) if len(args) > 1 else 3
    with tempfile.TemporaryDirectory(prefix="fp-feature-cost-") as tmp:
        d = Path(tmp)
        (d / "tmp").mkdir()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(d / "key.pem"),
                        "-out", str(d / "cert.pem"), "-days", "1", "-subj", "/CN=bench"],
                       check=True, capture_output=True)  # fmt: skip
        http, https = free_ports(2)
        (d / "nginx.conf").write_text(NGINX.format(d=d, host=HOST, http=http, https=https))
        nginx = subprocess.Popen(["nginx", "-p", str(d), "-e", str(d / "nginx-error.log"),
                                  "-c", str(d / "nginx.conf")])  # fmt: skip
        procs: list[subprocess.Popen] = []
        entry: dict[str, tuple[int, str, int]] = {}  # variant -> (port wrk loads, scheme, pid)
        try:
            time.sleep(0.5)
            for name, (settings, scheme, haproxy) in variants(http, https, d).items():
                proc, port = start_proxy(d, name, settings)
                procs.append(proc)
                pid = proc.pid
                if haproxy is not None:
                    proc, port = start_haproxy(d, port, haproxy)
                    procs.append(proc)
                entry[name] = (port, scheme, pid)
            if "--no-bpf" not in sys.argv:
                proc, ports = start_bpf_proxy(d, http)
                procs.append(proc)
                for name, port in zip(BPF_VARIANTS, ports):
                    entry[name] = (port, "http", proc.pid)
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in entry}
            for _ in range(rounds):
                for name, (port, scheme, pid) in entry.items():
                    runs[name].append(run(port, scheme, seconds, pid))
            for name, values in runs.items():
                rates = [rate for rate, _ in values]
                cpu = statistics.median(us for _, us in values)
                shown = ", ".join(f"{v:.0f}" for v in rates)
                print(f"{name:45s} {statistics.median(rates):6.0f} conn/s ({shown}),"
                      f" fastproxy {cpu:5.1f} µs CPU/conn")  # fmt: skip
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(15)
            nginx.terminate()
            nginx.wait(15)


if __name__ == "__main__":
    main()
