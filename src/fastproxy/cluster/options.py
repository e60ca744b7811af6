"""How an instance serving a config from etcd is set up (`fastproxy serve etcd://...`
options) and how it reaches etcd (the --etcd-* settings): known to the CLI and the
orchestrator without loading the etcd client (etcd.py), which a file config never needs."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import ConfigError

if TYPE_CHECKING:
    from .etcd import EtcdURL

SCHEME = "etcd://"
TLS_SCHEME = "etcds://"

DEFAULT_CACHE_DIR = "/var/lib/fastproxy"
LEASE_TTL = 10  # seconds an instance stays registered after it stops renewing


def is_etcd_url(text: str) -> bool:
    return text.startswith((SCHEME, TLS_SCHEME))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: where it points is not ours to trust


@dataclass(frozen=True)
class Security:
    """How to reach etcd: the --etcd-* flags (etcdctl's names)."""

    cacert: str | None = None  # CA that signed etcd's certificate (else certifi's CAs)
    cert: str | None = None  # client certificate...
    key: str | None = None  # ...and its key
    user: str | None = None  # etcd's own authentication, with the password in a file
    password_file: str | None = None
    insecure: bool = False  # plain etcd:// to an address beyond loopback

    def check(self, url: EtcdURL) -> None:
        """ConfigError (one line) for a combination that would not be safe or work."""
        if not url.tls:
            tls_flags = [f for f, v in (("cacert", self.cacert), ("cert", self.cert),
                                        ("key", self.key)) if v]  # fmt: skip
            if tls_flags:
                raise ConfigError(
                    f"{url}: --etcd-{tls_flags[0]} needs TLS: write the URL as etcds://"
                )
            remote = [h for h, _ in url.endpoints if not _is_loopback(h)]
            if remote and not self.insecure:
                raise ConfigError(
                    f"{url}: plain etcd:// to {remote[0]} would let anyone on the network "
                    "read and rewrite the fleet's config: use etcds:// with --etcd-cacert, "
                    "--etcd-cert and --etcd-key (or --etcd-insecure on a network you trust)"
                )
        if bool(self.cert) != bool(self.key):
            raise ConfigError("--etcd-cert and --etcd-key go together (a client certificate)")
        if bool(self.user) != bool(self.password_file):
            raise ConfigError("--etcd-user and --etcd-password-file go together")
        for flag, path in (("cacert", self.cacert), ("cert", self.cert), ("key", self.key)):
            if path:
                _readable(f"--etcd-{flag}", path)

    def password(self) -> str:
        """The first line of --etcd-password-file."""
        raw = _readable("--etcd-password-file", self.password_file or "")
        password = raw.decode("utf-8", "replace").split("\n", 1)[0].rstrip("\r")
        if not password:
            raise ConfigError(f"--etcd-password-file {self.password_file}: the file is empty")
        return password


def _readable(flag: str, path: str) -> bytes:
    """The start of a file we are given, or why it cannot be read (at start: one line,
    not a TLS error from deep inside a request later)."""
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except (OSError, ValueError) as exc:  # ValueError: NUL in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{flag} {path}: {reason}") from None


@dataclass(frozen=True)
class ClusterOptions:
    """Settings of an instance that serves a config from etcd."""

    instance_id: str | None = None  # default: hostname-pid
    cache_dir: str = DEFAULT_CACHE_DIR
    lease_ttl: int = LEASE_TTL
    security: Security = field(default_factory=Security)  # how etcd is reached
    local: dict[str, Any] = field(default_factory=dict)  # host-local settings (--local-config)

    def resolved_id(self) -> str:
        return self.instance_id or f"{socket.gethostname()}-{os.getpid()}"
