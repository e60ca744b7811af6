"""The TLS termination contenders (SPEC §16, issue 22): fastproxy, HAProxy `bind ... ssl`
and nginx `stream` with `ssl`, one thread each, pinned to the server's CPU, each with
one TLS front port per key type (ECDSA P-256, RSA 2048: the same certificate files for
all, made once per run) relaying plaintext to the harness's nginx HTTP backend.

Each in its best setup for TLS: session tickets on everywhere (TLS 1.3 tickets are how
clients resume); nginx with its shared session cache besides, HAProxy with its session
cache sized up (`tune.ssl.cachesize`); versions, ciphers and groups left at each one's
defaults, which are OpenSSL's (the same library, Debian's libssl3, in all three): what
each negotiated is recorded every round and a case fails if they differ."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench_config import ONLY
from bench_contenders import Unavailable, fastproxy_config, start_fastproxy
from bench_peers import start_haproxy, start_nginx_stream
from bench_procs import HOST, Pinned, free_ports

# Table order: the peers, then ours: fastproxy in its default relay mode (splice, which
# a TLS connection cannot use without kTLS: it copies through PipeSize buffers) and in
# copy mode (the same buffers). A smoke run leaves copy mode out.
NAMES = ("haproxy", "nginx-stream", "fastproxy-splice", "fastproxy-copy")
SMOKE_NAMES = NAMES[:3]
KEYS = ("ecdsa", "rsa")
SERVER_NAME = "bench.test"
# The most connections a TLS case holds at once (wrk's 32, the handshake generator's
# few); the peers' limits are set above it (bench_peers.connection_limit).
CONNECTIONS = 256

# HAProxy: its own session cache (TLS 1.2 session ids; default 20,000 entries) sized
# for the handshake loads' new sessions; tickets are on unless `no-tls-tickets`.
HAPROXY_TLS = "    tune.ssl.cachesize 200000\n"
# nginx: a session cache shared by its workers (10 MB: ~40,000 sessions; the default is
# none) and tickets (on by default: said here so that it is seen).
NGINX_TLS = """\
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:TLS:10m;
    ssl_session_tickets on;
"""


@dataclass(frozen=True)
class Certificate:
    cert: str
    key: str
    pem: str  # both in one file, as HAProxy's `crt` takes them


def make_certificates(where: Path) -> dict[str, Certificate]:
    """A self-signed certificate for SERVER_NAME per key type (the client of the load
    does not verify chains; check_served compares what each contender sends)."""
    where.mkdir(parents=True, exist_ok=True)
    new_key = {
        "ecdsa": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        "rsa": ["-newkey", "rsa:2048"],
    }
    made = {}
    for kind in KEYS:
        cert, key, pem = (where / f"{kind}.{ext}" for ext in ("crt", "key", "pem"))
        subprocess.run(
            ["openssl", "req", "-x509", *new_key[kind], "-nodes", "-keyout", str(key)]
            + ["-out", str(cert), "-days", "7", "-subj", f"/CN={SERVER_NAME}"]
            + ["-addext", f"subjectAltName=DNS:{SERVER_NAME}"],
            check=True,
            capture_output=True,
        )
        pem.write_text(cert.read_text() + key.read_text())
        made[kind] = Certificate(str(cert), str(key), str(pem))
    return made


@dataclass(frozen=True)
class TlsContender:
    name: str
    ports: dict[str, int]  # key type -> its TLS front port
    pid: int


class TlsContenders:
    """The three started once per run on first use; one that cannot start is left out,
    with its reason."""

    def __init__(self, workdir: Path, http_port: int, certificates: dict[str, Certificate]):
        self.workdir = workdir
        self.http_port = http_port
        self.certificates = certificates
        self._running: dict[str, TlsContender] = {}
        self._procs: dict[str, Pinned] = {}
        self.unavailable: dict[str, str] = {}

    def available(self, names: tuple[str, ...]) -> list[str]:
        for name in names:
            if name in self._running or name in self.unavailable or (ONLY and name not in ONLY):
                continue
            try:
                self._running[name] = self._start(name)
            except (Unavailable, FileNotFoundError) as exc:
                self.unavailable[name] = str(exc)
        return [n for n in names if n in self._running]

    def get(self, name: str) -> TlsContender:
        return self._running[name]

    def _start(self, name: str) -> TlsContender:
        fronts = dict(zip(KEYS, free_ports(len(KEYS)), strict=True))
        workdir = self.workdir / name
        workdir.mkdir()
        routes: list[tuple[int | str, list[int]]] = [(fronts[k], [self.http_port]) for k in KEYS]
        certs = self.certificates
        if name == "haproxy":
            proc = start_haproxy(
                "haproxy-nosplice",  # TLS records are not spliced (no kTLS in 2.6)
                routes,
                workdir,
                connections=CONNECTIONS,
                tls={fronts[k]: certs[k].pem for k in KEYS},
                tune=HAPROXY_TLS,
            )
        elif name == "nginx-stream":
            proc = start_nginx_stream(
                routes,
                workdir,
                connections=CONNECTIONS,
                tls={fronts[k]: (certs[k].cert, certs[k].key) for k in KEYS},
                stream=NGINX_TLS,
            )
        else:
            config = fastproxy_config({k: ([fronts[k]], [self.http_port]) for k in KEYS}, "ports")
            for app in config["Apps"]:
                cert = certs[app["Name"]]
                app["Tls"] = {"Certificates": [{"Cert": cert.cert, "Key": cert.key}]}
            proc = start_fastproxy(config, workdir, "--relay", name.removeprefix("fastproxy-"))
        self._procs[name] = proc
        try:
            for port in fronts.values():
                proc.wait_listening(port)
            for kind, port in fronts.items():
                check_served(port, certs[kind])
        except BaseException:
            proc.stop()
            raise
        return TlsContender(name, fronts, proc.pid)

    def stop_all(self) -> None:
        for proc in self._procs.values():
            proc.stop()
        self._procs.clear()
        self._running.clear()


def check_served(port: int, certificate: Certificate) -> None:
    """A verified handshake on `port` serves exactly `certificate` and a request through
    it is answered by the backend: the same certificate for every contender, and a route
    that works, before any load."""
    context = ssl.create_default_context(cafile=certificate.cert)
    raw = socket.create_connection((HOST, port), timeout=10)
    with context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
        served = tls.getpeercert(binary_form=True)
        tls.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
    expected = ssl.PEM_cert_to_DER_cert(Path(certificate.cert).read_text())
    if served != expected:
        raise RuntimeError(f"port {port} serves another certificate than {certificate.cert}")
    if not answer.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"port {port}: no answer from the backend: {answer[:200]!r}")


def negotiated(raw: str) -> str:
    """What a tlsload run's first counted handshake negotiated, as one line."""
    found = json.loads(raw.splitlines()[0]).get("negotiated", {})
    return " ".join(str(found.get(k, "?")) for k in ("version", "cipher", "group", "key"))
