"""TLS termination against the peers (SPEC §16; issue 22): fastproxy's relay, HAProxy
`bind ... ssl` and nginx `stream` with `ssl`, one worker each, the same certificates
(ECDSA P-256 and RSA 2048), to the same plain backend.

- full and resumed handshakes per second: `openssl s_time -new` / `-reuse` (TLS 1.2 for
  -reuse, whose tickets s_time resumes; TLS 1.3 for -new). s_time is one process, the
  load generator may be the bottleneck: the proxy's CPU share is reported beside it;
- bulk: a Python ssl client sends BULK_MB through the proxy to an echo backend and
  reads them back (both directions, sha256 checked); proxy CPU seconds per GB moved
  (both directions counted) from /proc/PID/stat. Loopback and one shared host: the
  client and the echo compete with the proxy for the CPUs, so Gb/s is labelled so;
- keep-alive: round trips of 64 bytes on one connection per second.

`python benchmarks/tls_bench.py [--smoke]` writes benchmarks/results/tls.md and .json.
--smoke: one second per figure (the figures are then only a sign of life). Not part of
the pytest benchmark harness (its contenders are plain TCP proxies); a full run belongs
on a quiet machine."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

from proxyproc import free_ports, wait_for_port  # noqa: E402
from servers import Backend  # noqa: E402
from tlscerts import Pki  # noqa: E402
from tlsclient import exchange  # noqa: E402

HOST = "127.0.0.1"
NAME = "bench.test"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def echo(conn: socket.socket) -> None:
    while data := conn.recv(1 << 20):
        conn.sendall(data)


class Contender:
    def __init__(self, name: str, argv: list[str], port: int, log: Path) -> None:
        self.name = name
        self.port = port
        self._log = open(log, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, HOST, 20)
        except OSError:
            self.stop()
            raise RuntimeError(f"{name} did not start: {log.read_text()[-1000:]}") from None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


def start_fastproxy(work: Path, cert: tuple[str, str], backend: int, port: int) -> Contender:
    config = {
        "Listen": HOST, "Admin": "127.0.0.1:0", "Steering": "ports", "Workers": 1,
        "AdminTokenFile": str(work / "token"), "Relay": "splice",
        "Apps": [{"Name": "tls", "Ports": [port], "Targets": [f"{HOST}:{backend}"],
                  "HealthCheck": {"Interval": 60},
                  "Tls": {"Certificates": [{"Cert": cert[0], "Key": cert[1]}]}}],
    }  # fmt: skip
    path = work / "fastproxy.json"
    path.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "fastproxy", "serve", str(path), "--no-watch",
            "--control-socket", str(work / "control.sock"), "--admin-socket",
            str(work / "admin.sock")]  # fmt: skip
    return Contender("fastproxy", argv, port, work / "fastproxy.log")


def start_haproxy(work: Path, cert: tuple[str, str], backend: int, port: int) -> Contender:
    pem = work / "haproxy.pem"
    pem.write_text(Path(cert[0]).read_text() + Path(cert[1]).read_text())
    (work / "haproxy.cfg").write_text(f"""\
global
    nbthread 1
    maxconn 4000
    tune.bufsize 65536
    tune.ssl.default-dh-param 2048
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen tls
    bind {HOST}:{port} ssl crt {pem}
    server s0 {HOST}:{backend}
""")
    return Contender("haproxy", ["haproxy", "-db", "-f", str(work / "haproxy.cfg")], port,
                     work / "haproxy.log")  # fmt: skip


def start_nginx(work: Path, cert: tuple[str, str], backend: int, port: int) -> Contender:
    (work / "nginx.conf").write_text(f"""\
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 10000; multi_accept on; }}
stream {{
    proxy_buffer_size 64k;
    ssl_session_cache off;
    ssl_session_tickets on;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {{
        listen {HOST}:{port} ssl;
        ssl_certificate {cert[0]};
        ssl_certificate_key {cert[1]};
        proxy_pass {HOST}:{backend};
    }}
}}
""")
    argv = ["nginx", "-p", str(work), "-e", str(work / "error.log"), "-c",
            str(work / "nginx.conf")]  # fmt: skip
    return Contender("nginx", argv, port, work / "nginx.log")


STARTERS = {"fastproxy": start_fastproxy, "haproxy": start_haproxy, "nginx": start_nginx}


def handshakes(c: Contender, seconds: int, mode: str, ca: str) -> tuple[float, float]:
    """(handshakes per second, the proxy's CPU share meanwhile)."""
    version = "-tls1_3" if mode == "-new" else "-tls1_2"
    before, t0 = cpu_seconds(c.proc.pid), time.monotonic()
    done = subprocess.run(
        ["openssl", "s_time", "-connect", f"{HOST}:{c.port}", mode, version,
         "-time", str(seconds), "-CAfile", ca],
        capture_output=True, text=True, timeout=seconds + 60,
    )  # fmt: skip
    cpu = (cpu_seconds(c.proc.pid) - before) / (time.monotonic() - t0)
    found = re.findall(r"(\d+) connections in (\d+) real seconds", done.stdout)
    if not found:
        raise RuntimeError(f"s_time against {c.name}: {done.stdout[-500:]}{done.stderr[-500:]}")
    count, real = map(int, found[-1])
    return count / max(real, 1), cpu


def bulk(c: Contender, megabytes: int, ca: str) -> tuple[float, float]:
    """(Gb/s each way on loopback, proxy CPU seconds per GB moved, both ways)."""
    data = os.urandom(1 << 20) * megabytes
    context = ssl.create_default_context(cafile=ca)
    raw = socket.create_connection((HOST, c.port), timeout=30)
    with context.wrap_socket(raw, server_hostname=NAME) as sock:
        before, t0 = cpu_seconds(c.proc.pid), time.monotonic()
        digest, received = exchange(sock, data, timeout=300)
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(c.proc.pid) - before
    assert received == len(data) and digest == hashlib.sha256(data).hexdigest(), c.name
    return len(data) * 8 / elapsed / 1e9, cpu / (2 * len(data) / 1e9)


def keepalive(c: Contender, seconds: float, ca: str) -> float:
    context = ssl.create_default_context(cafile=ca)
    raw = socket.create_connection((HOST, c.port), timeout=30)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    count = 0
    with context.wrap_socket(raw, server_hostname=NAME) as sock:
        payload = b"x" * 64
        deadline = time.monotonic() + seconds
        start = time.monotonic()
        while time.monotonic() < deadline:
            sock.sendall(payload)
            got = 0
            while got < len(payload):
                got += len(sock.recv(4096))
            count += 1
        return count / (time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one second per figure")
    parser.add_argument("--out", default=str(HERE / "results" / "tls"))
    args = parser.parse_args()
    seconds, megabytes = (1, 16) if args.smoke else (10, 512)
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pki = Pki(work / "pki")
        certs = {
            "ecdsa-p256": pki.issue("ecdsa", [NAME], kind="ec"),
            "rsa-2048": pki.issue("rsa", [NAME], kind="rsa"),
        }
        backend = Backend(echo)
        for key, cert in certs.items():
            for name, start in STARTERS.items():
                if name != "fastproxy" and shutil.which(name) is None:
                    continue
                (port,) = free_ports(1)
                (work / name).mkdir(exist_ok=True)
                c = start(work / name, cert, backend.port, port)
                try:
                    full, full_cpu = handshakes(c, seconds, "-new", pki.ca)
                    resumed, resumed_cpu = handshakes(c, seconds, "-reuse", pki.ca)
                    gbps, cpu_per_gb = bulk(c, megabytes, pki.ca)
                    rate = keepalive(c, seconds, pki.ca)
                finally:
                    c.stop()
                row = {
                    "key": key, "proxy": name,
                    "full_hs_per_s": round(full), "full_proxy_cpu": round(full_cpu, 2),
                    "resumed_hs_per_s": round(resumed),
                    "resumed_proxy_cpu": round(resumed_cpu, 2),
                    "bulk_gbps": round(gbps, 2), "cpu_s_per_gb": round(cpu_per_gb, 3),
                    "keepalive_rt_per_s": round(rate),
                }  # fmt: skip
                results.append(row)
                print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"smoke": args.smoke, "load": os.getloadavg(), "results": results}, indent=1))  # fmt: skip
    kind = "SMOKE RUN (1 s per figure, a sign of life, not a measurement)" if args.smoke else "Run"
    lines = [
        "# TLS termination: fastproxy, HAProxy `bind ssl`, nginx `stream` ssl",
        "",
        f"{kind} on a shared 2-CPU host, load average {os.getloadavg()[0]:.1f} at the end;"
        " generated by `benchmarks/tls_bench.py`. One worker each. Loopback: the client"
        " and the echo share the CPUs with the proxy (Gb/s is bounded by that; CPU per GB"
        " is the proxy's own). Handshakes by `openssl s_time` (one process: the proxy CPU"
        " column says whether the proxy was the limit).",
        "",
        "| key | proxy | full hs/s | proxy CPU | resumed hs/s | proxy CPU"
        " | bulk Gb/s (each way) | proxy CPU s/GB | keep-alive rt/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['key']} | {r['proxy']} | {r['full_hs_per_s']} | {r['full_proxy_cpu']} |"
            f" {r['resumed_hs_per_s']} | {r['resumed_proxy_cpu']} | {r['bulk_gbps']} |"
            f" {r['cpu_s_per_gb']} | {r['keepalive_rt_per_s']} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"written: {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    threading.excepthook = lambda args: None  # an echo thread ending with its client
    sys.exit(main())
