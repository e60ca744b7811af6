"""The config's shape: the keys each section accepts, the modes and limits, and the
frozen dataclasses a parsed config is made of (Config > App > Target, HealthCheck)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from ..control.admintoken import DEFAULT_PATH as DEFAULT_ADMIN_TOKEN_FILE

BALANCE_MODES = ("round-robin", "least-conn", "random", "source-hash", "maglev")
STEERING_MODES = ("auto", "bpf", "ports")
RELAY_MODES = ("splice", "copy")
# The in-kernel relay was taken out: its kernel may send a segment twice.
SOCKMAP_REMOVED = (
    '"sockmap" is no longer offered (the kernel\'s sk_skb redirect may send a segment'
    ' twice: benchmarks/sockmap/README.md); use "splice" or "copy"'
)
PROXY_PROTOCOLS = ("v1", "v2")

PIPE_SIZE_MIN, PIPE_SIZE_MAX = 4096, 1 << 20
MAX_WORKERS = 1024
# Durations end up as milliseconds in timers of the relay; one year is more than anyone
# means and keeps every value far from integer overflow there.
MAX_DURATION = 365 * 86400.0
# Counters (Rise, Fall, MaxConnections) must fit a C int in the relay.
MAX_COUNT = 2**31 - 1
# Clients an app may hold still sending their PROXY header or ClientHello (SPEC §12):
# silent connections are cheap to open and each holds a descriptor.
DEFAULT_MAX_IN_PREFACE = 1024
# New connections per second a token bucket may allow (and its burst).
MAX_RATE = 1e6

TOP_KEYS = (
    "Apps",
    "Listen",
    "Admin",
    "AdminTokenFile",
    "AdminHosts",
    "Workers",
    "Steering",
    "DrainTimeout",
    "Relay",
    "PipeSize",
    "User",
    "Group",
    "AccessLog",
)
# Settings of one host, never of a fleet (SPEC section 12): who runs the proxy, what it
# writes to disk, where it listens and is administered. A config in etcd that set them
# would let whoever can write etcd choose the file root appends to or the admin address.
# AdminHosts counts once the config knows it.
HOST_LOCAL_KEYS = tuple(
    key
    for key in TOP_KEYS
    if key in {"Admin", "AdminTokenFile", "AdminHosts", "User", "Group", "AccessLog",
               "Steering", "Workers", "Relay", "PipeSize", "Listen"}
)  # fmt: skip
APP_KEYS = (
    "Name",
    "Ports",
    "Targets",
    "Balance",
    "HealthCheck",
    "ConnectTimeout",
    "IdleTimeout",
    "MaxConnections",
    "ProxyProtocol",
    "AcceptProxyProtocol",
    "ServerNames",
    "MaxConnectionsPerSource",
    "Panic",
    "SourceMask",
    "MaxConnectionsInPreface",
    "Allow",
    "Deny",
    "MaxConnectionRate",
    "MaxConnectionRatePerSource",
    "TcpKeepalive",
    "TcpUserTimeout",
    "MaxConnectionDuration",
    "OnTargetDown",
    "QueueTimeout",
    "SlowStart",
    "Outlier",
    "Tls",
)
# An app's Tls (SPEC §14; parsed in tls.py, its files loaded by fastproxy/tlsconfig.py)
TLS_KEYS = (
    "Certificates",
    "Mode",
    "MinVersion",
    "Alpn",
    "ClientCA",
    "TargetCA",
    "TargetServerName",
    "HandshakeTimeout",
)
CERTIFICATE_KEYS = ("Cert", "Key")
TLS_MODES = ("terminate", "reencrypt")
TLS_MIN_VERSIONS = ("1.2", "1.3")
DEFAULT_HANDSHAKE_TIMEOUT = 5.0  # as for the other prefaces (SPEC §12)
HEALTH_KEYS = (
    "Interval",
    "Timeout",
    "Rise",
    "Fall",
    "Type",
    "Send",
    "Expect",
    "Path",
    "Host",
    "ExpectStatus",
)
HEALTH_TYPES = ("tcp", "send-expect", "http")
TARGET_KEYS = ("Address", "Weight", "Backup", "MaxConnections", "SoftLimit")
KEEPALIVE_KEYS = ("Idle", "Interval", "Count")
OUTLIER_KEYS = ("ConsecutiveFailures", "BaseEjection", "MaxEjectedPercent")
ON_TARGET_DOWN = ("keep", "close")
MAX_WEIGHT = 1000
# A probe sends its bytes with one send() on a fresh socket, whose buffer always has
# room for this much, and keeps at most this much of the reply.
MAX_PROBE_BYTES = 4096
# A config is a human-sized file: anything larger is a mistake (a log, a disk image).
MAX_CONFIG_BYTES = 16 << 20


@dataclass(frozen=True)
class HealthCheck:
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    type: str = "tcp"  # "tcp" | "send-expect" | "http"
    send: bytes = b""  # send-expect: sent once connected (may be empty)
    expect: bytes = b""  # send-expect: the reply must contain these bytes
    path: str = "/"  # http
    host: str | None = None  # http: Host header; the target's address when None
    expect_status: tuple[int, int] = (200, 399)  # http: inclusive range


@dataclass(frozen=True)
class Target:
    host: str  # hostname, IPv4 literal, or IPv6 literal WITHOUT brackets
    port: int
    weight: int = 1  # 1..MAX_WEIGHT, share of new connections
    backup: bool = False  # used only while no other target of the app is up
    max_connections: int = 0  # hard: never a connection above it; 0 = unlimited
    soft_limit: int = 0  # above it, new connections only while every target is; 0 = none

    @property
    def address(self) -> str:
        """Canonical "host:port" (IPv6 as "[::1]:80"), the name used in metrics and admin."""
        return _join_host_port(self.host, self.port)

    def __str__(self) -> str:
        return self.address


@dataclass(frozen=True)
class Keepalive:
    """TCP keepalive probes: the first after `idle` seconds of silence, then every
    `interval`; `count` unanswered ones and the connection is dead."""

    idle: int = 60
    interval: int = 10
    count: int = 6


@dataclass(frozen=True)
class Outlier:
    """Outlier ejection: `consecutive_failures` connect failures or resets before the
    target's first byte in a row eject a target for `base_ejection` seconds times its
    recent ejections; at most `max_ejected_percent` of an app's targets at once."""

    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejected_percent: int = 50


@dataclass(frozen=True)
class TlsCertificate:
    cert: str  # PEM: the certificate, then its chain
    key: str  # PEM: its private key


@dataclass(frozen=True)
class Tls:
    certificates: tuple[TlsCertificate, ...]  # chosen by SNI; the first is the default
    mode: str = "terminate"  # "terminate": plaintext to targets; "reencrypt": TLS to them
    min_version: str = "1.2"
    alpn: tuple[str, ...] = ()  # protocols offered, in our order of preference
    client_ca: str | None = None  # clients must show a certificate it signed
    target_ca: str | None = None  # reencrypt: targets' certificates are checked against it
    target_server_name: str | None = None  # reencrypt: the name they must have (else host)
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT


@dataclass(frozen=True)
class App:
    name: str
    ports: tuple[int, ...]
    targets: tuple[Target, ...]
    balance: str = "round-robin"
    health_check: HealthCheck = HealthCheck()
    connect_timeout: float = 5.0  # seconds
    idle_timeout: float = 3600.0  # seconds; 0 disables
    max_connections: int = 0  # 0 = unlimited
    proxy_protocol: str | None = None  # None | "v1" | "v2"
    accept_proxy_protocol: bool = False  # clients start with a PROXY header
    server_names: tuple[str, ...] = ()  # TLS server names (lower case), exact or "*.suffix"
    max_connections_per_source: int = 0  # 0 = unlimited
    panic: bool = True  # no target up: try them all anyway (False: close the client)
    # Who may send a PROXY header: CIDRs; () with accept_proxy_protocol = any sender.
    proxy_senders: tuple[str, ...] = ()
    source_mask: tuple[int, int] = (32, 64)  # per-source key: IPv4, IPv6 prefix lengths
    max_connections_in_preface: int = DEFAULT_MAX_IN_PREFACE
    allow: tuple[str, ...] = ()  # CIDRs; () = every client not denied
    deny: tuple[str, ...] = ()  # CIDRs
    max_connection_rate: float = 0.0  # new connections per second; 0 = unlimited
    max_connection_rate_per_source: float = 0.0
    # Target-aware balancing (balancing.py)
    keepalive: Keepalive | None = None  # TcpKeepalive on both sockets; None: off
    user_timeout: float = 0.0  # TcpUserTimeout, seconds; 0 = the kernel's default
    max_duration: float = 0.0  # MaxConnectionDuration, seconds (+ up to 10 %); 0 = none
    on_target_down: str = "keep"  # "close": a target's connections go when it goes down
    queue_timeout: float = 0.0  # every target at MaxConnections: a client waits this long
    slow_start: float = 0.0  # seconds a target that comes up takes to reach its full share
    outlier: Outlier | None = None  # outlier ejection; None: off
    tls: Tls | None = None  # TLS termination; None: plain TCP


@dataclass(frozen=True)
class Config:
    apps: tuple[App, ...]
    listen: tuple[str, ...] = ("::",)  # addresses only; "::" = all IPv4 and IPv6
    admin: tuple[str, int] = ("127.0.0.1", 9901)
    admin_token_file: str = DEFAULT_ADMIN_TOKEN_FILE
    admin_hosts: tuple[str, ...] = ()  # names the admin endpoint answers to (lower case)
    workers: int = 0  # 0 = one per CPU, resolved by the server
    steering: str = "auto"
    drain_timeout: float = 30.0
    relay: str = "splice"
    pipe_size: int = 0  # bytes; 0 = kernel default
    user: str | None = None  # started as root: drop to this user once set up
    group: str | None = None  # ...and this group (default: the user's)
    access_log: str | None = None  # a path, "-" for stderr, None: off
    source: str = "<config>"  # the file it came from, for messages

    def port_owner(self) -> Mapping[int, str]:
        """Map every configured port to the name of the app that owns it; on a port
        shared by name, the default app (the one without ServerNames), else the first."""
        return self._port_owner

    def port_apps(self) -> Mapping[int, tuple[App, ...]]:
        """Map every configured port to the apps on it (several when shared by name)."""
        return self._port_apps

    # Worked out once per Config (it is frozen): a start with 10,000 ports asks for them
    # from routing, listeners and admission, and each pass is milliseconds. Read-only.
    @cached_property
    def _port_owner(self) -> dict[int, str]:
        return {
            port: apps[0].name if len(apps) == 1 else _default_app(apps).name
            for port, apps in self._port_apps.items()
        }

    @cached_property
    def _port_apps(self) -> dict[int, tuple[App, ...]]:
        apps: dict[int, tuple[App, ...]] = {}
        for app in self.apps:
            add_ports(apps, app)
        return apps

    def app(self, name: str) -> App:
        """The app called `name`; KeyError if there is none."""
        for app in self.apps:
            if app.name == name:
                return app
        raise KeyError(name)


def add_ports(by_port: dict[int, tuple[App, ...]], app: App) -> None:
    """Note `app` on each of its ports, after the apps already there. The ports it has
    alone share one tuple, and the work is done by dict and set operations: a start with
    10,000 ports makes neither 10,000 lists (each a cyclic GC object) nor a Python loop."""
    shared = {port: (*by_port[port], app) for port in by_port.keys() & app.ports}
    by_port.update(dict.fromkeys(app.ports, (app,)))  # the ports' order: first seen
    by_port.update(shared)


def _default_app(apps: tuple[App, ...]) -> App:
    """Of apps sharing a port by name: the one without ServerNames, else the first."""
    return next((app for app in apps if not app.server_names), apps[0])


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
