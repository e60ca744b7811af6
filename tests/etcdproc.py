"""A real etcd (Debian's etcd-server) for the cluster tests and benchmark, plain or
TLS-only with client certificates (made here with the openssl CLI), and fastproxy
instances that serve their config from it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import proxyproc
from fastproxy.cluster.cli import cluster_state
from fastproxy.cluster.etcd import Etcd as EtcdClient
from fastproxy.cluster.etcd import EtcdURL, Security
from proxyproc import ROOT, Proxy, free_ports

# What every test instance sets for itself: host-local settings never come from etcd
LOCAL = {"Steering": "ports", "Listen": "127.0.0.1", "Admin": "127.0.0.1:0"}


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


class TLS:
    """A CA of our own in `directory`, and certificates it signs with openssl: etcd's
    (for 127.0.0.1 and localhost; also a client one, as etcd's gateway dials etcd
    with it) and a client's. Keys are P-256: quick to make."""

    def __init__(self, directory: Path, name: str = "fp-test") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.ca, ca_key = directory / f"{name}-ca.crt", directory / f"{name}-ca.key"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", ca_key, "-out", self.ca, "-days", "2",
                 "-subj", f"/CN={name} CA")  # fmt: skip
        self.server_cert, self.server_key = self._sign(
            f"{name}-server", "localhost", ca_key, "serverAuth,clientAuth"
        )
        self.cert, self.key = self._sign(f"{name}-client", "fastproxy", ca_key, "clientAuth")

    def _sign(self, stem: str, cn: str, ca_key: Path, usage: str) -> tuple[Path, Path]:
        cert, key = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        csr, ext = self.directory / f"{stem}.csr", self.directory / f"{stem}.ext"
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            f"extendedKeyUsage={usage}\n"
        )
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")  # fmt: skip
        _openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", ca_key,
                 "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
                 "-out", cert, "-days", "2", "-extfile", ext)  # fmt: skip
        return cert, key

    def args(self) -> list[str]:
        """The client's flags for fastproxy."""
        return ["--etcd-cacert", str(self.ca), "--etcd-cert", str(self.cert),
                "--etcd-key", str(self.key)]  # fmt: skip

    def security(self) -> Security:
        return Security(str(self.ca), str(self.cert), str(self.key))

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


class Etcd:
    """One etcd member with its data in `data_dir`; stopped by pid, never by name.
    Started in the network namespace of the calling thread. With `tls`, its client
    port speaks only TLS and (client_cert_auth) takes only clients with a certificate
    of tls's CA."""

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        ports: list[int] | None = None,
        tls: TLS | None = None,
        max_request_bytes: int | None = None,
        client_cert_auth: bool = True,
        extra: tuple[str, ...] = (),
    ):
        self.data_dir = data_dir
        self.host = host
        self.client_port, self.peer_port = ports or free_ports(2)
        self.endpoint = f"{host}:{self.client_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.with_suffix(".log")
        self.tls = tls
        self.client_cert_auth = client_cert_auth
        self.extra = extra  # more of etcd's flags
        self.max_request_bytes = max_request_bytes

    def url(self, prefix: str = "fp") -> str:
        return f"etcd{'s' if self.tls else ''}://{self.endpoint}/{prefix}"

    @property
    def base(self) -> str:
        return f"http{'s' if self.tls else ''}://{self.endpoint}"

    def start(self) -> Etcd:
        client = self.base
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            "etcd",
            "--name=fp-etcd",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=fp-etcd={peer}",
            "--logger=zap",
            "--log-level=warn",
        ]
        if self.tls is not None:
            argv += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
            ]
            if self.client_cert_auth:
                argv += [f"--trusted-ca-file={self.tls.ca}", "--client-cert-auth"]
        if self.max_request_bytes is not None:
            argv.append(f"--max-request-bytes={self.max_request_bytes}")
        argv += self.extra
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process holds it
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                with self._open(f"{client}/health", None, 1) as answer:
                    if json.loads(answer.read()).get("health") == "true":
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"etcd did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def _open(self, url: str, body: dict[str, Any] | None, timeout: float) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
        context = self.tls.context() if self.tls is not None else None
        return urllib.request.urlopen(request, timeout=timeout, context=context)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """etcd's JSON API directly, as curl would (with our client certificate)."""
        with self._open(f"{self.base}{path}", body, 5) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result

    def compact(self) -> int:
        """Compact the history up to the current revision; returns it."""
        status = self.post("/v3/kv/range", {"key": "Lw=="})  # any key: read the header
        revision = int(status["header"]["revision"])
        self.post("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision


def have_etcd() -> bool:
    return shutil.which("etcd") is not None


def cli(
    *args: str, check: bool = True, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`fastproxy ARGS...` as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "fastproxy", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def client(url: str, security: Security | None = None) -> EtcdClient:
    return EtcdClient(EtcdURL.parse(url), security or Security(insecure=True))


def push(config: dict[str, Any] | bytes, url: str, security: Security | None = None) -> int:
    """Store a config (in process: `fastproxy config push` has its own test); its revision.
    bytes go as they are, past any validation."""
    etcd = client(url, security)
    value = config if isinstance(config, bytes) else json.dumps(config).encode()
    return etcd.put_if(etcd.url.config_key, value, None)


def instances(url: str, security: Security | None = None) -> dict[str, dict[str, Any]]:
    """What `fastproxy cluster status` shows: records by instance id."""
    return {record["id"]: record for record in cluster_state(client(url, security))[1]}


class EtcdProxy(Proxy):
    """`fastproxy serve etcd://...`, its log, admin endpoint and process like Proxy's."""

    def __init__(
        self,
        tmp_path: Path,
        url: str,
        *args: str,
        instance_id: str = "fp-etcd-test",
        prefix: list[str] | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
        local: dict[str, Any] | None = None,
    ) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp_path / "fastproxy.log"
        self.control_socket = str(tmp_path / "control.sock")
        self.cache_dir = tmp_path / "cache"
        self.local_config = tmp_path / "local.json"
        self.local_config.write_text(json.dumps(LOCAL if local is None else local))
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        argv = [
            *(prefix or []),
            sys.executable,
            "-m",
            "fastproxy",
            "serve",
            url,
            "--instance-id",
            instance_id,
            "--cache-dir",
            str(self.cache_dir),
            "--control-socket",
            self.control_socket,
            "--local-config",
            str(self.local_config),
            *args,
        ]
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.pid = self.proc.pid
        proxyproc.RUNNING.append(self)
        if wait:
            self.wait_serving()

    def wait_serving(self) -> None:
        try:
            self._wait_serving(0)
        except Exception:
            self.kill()
            raise

    def metric(self, name: str) -> float:
        code, body = self.http("GET", "/metrics")
        assert code == 200
        found = re.search(rf"^{name} (\S+)$", body.decode(), re.M)
        assert found, name
        return float(found.group(1))

    def wait_log(self, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert time.monotonic() < deadline, f"no {text!r} in the log: {self.log()}"
            time.sleep(0.05)


HUB_ADDRESS = "198.51.100.1"  # TEST-NET-2, only ever inside our own namespaces


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Fleet:
    """etcd in a hub namespace with a bridge, and `size` namespaces each joined to it
    by a veth pair: every instance serves the same ports on its own loopback and
    reaches the one etcd at HUB_ADDRESS. Use as a context manager; everything it
    made (processes by pid, namespaces) is gone afterwards."""

    def __init__(self, tmp_path: Path, size: int, tag: str = "fp-etcd") -> None:
        from fastproxy import netns

        self.netns = netns
        self.tmp_path = tmp_path
        self.hub = f"{tag}-hub-{os.getpid()}"
        self.members = [f"{tag}-{i}-{os.getpid()}" for i in range(size)]
        self.etcd = Etcd(tmp_path / "etcd", host=HUB_ADDRESS, ports=[2379, 2380])
        self.url = self.etcd.url("fleet")
        self.proxies: list[EtcdProxy] = []

    def __enter__(self) -> Fleet:
        try:
            self.netns.create(self.hub)
            _ip("-n", self.hub, "link", "add", "fpe-br", "type", "bridge")
            _ip("-n", self.hub, "addr", "add", f"{HUB_ADDRESS}/24", "dev", "fpe-br")
            _ip("-n", self.hub, "link", "set", "fpe-br", "up")
            for i, name in enumerate(self.members):
                self.netns.create(name)
                hub_end = f"fpe-h{i}"
                _ip("-n", self.hub, "link", "add", hub_end, "type", "veth", "peer", "name",
                    "fpe0", "netns", name)  # fmt: skip
                _ip("-n", self.hub, "link", "set", hub_end, "master", "fpe-br", "up")
                _ip("-n", name, "addr", "add", f"198.51.100.{10 + i}/24", "dev", "fpe0")
                _ip("-n", name, "link", "set", "fpe0", "up")
            with self.in_hub():
                self.etcd.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proxy in self.proxies:
            proxy.kill()
        self.etcd.stop()
        for name in [*self.members, self.hub]:
            self.netns.delete(name)

    def in_hub(self) -> Any:
        return self.netns.entered(self.netns.path(self.hub))

    def inside(self, i: int) -> Any:
        return self.netns.entered(self.netns.path(self.members[i]))

    def start(self, *args: str) -> list[EtcdProxy]:
        """One instance per namespace, all started before any is waited for."""
        self.proxies = [
            EtcdProxy(
                self.tmp_path / f"i{i}",
                self.url,
                *args,
                "--etcd-insecure",  # on the test's own bridge
                instance_id=name,
                prefix=self.netns.nsenter_argv(name),
                wait=False,
            )
            for i, name in enumerate(self.members)
        ]
        for proxy in self.proxies:
            proxy.wait_serving()
        return self.proxies

    def push(self, config: dict[str, Any]) -> int:
        with self.in_hub():
            return push(config, self.url)

    def instances(self) -> dict[str, dict[str, Any]]:
        with self.in_hub():
            return instances(self.url)
