"""Configuration: parse and validate the JSON config (SPEC section 1).

Every problem becomes a ConfigError whose text is one line naming the file, the app and
the field, for example::

    proxy.json: app "b" (Apps[1]): Ports: port 5001 is already used by app "a"

Nothing here touches the network: hostnames are checked for syntax only. They are resolved
by the server at run time, where an unresolvable target is a down target, not an error.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import stat
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .admintoken import DEFAULT_PATH as DEFAULT_ADMIN_TOKEN_FILE
from .privileges import account
from .tlsconfig import CERTIFICATE_KEYS, TLS_KEYS, Tls, parse_tls
from .wording import plural

__all__ = [
    "BALANCE_MODES",
    "HEALTH_TYPES",
    "PROXY_PROTOCOLS",
    "RELAY_MODES",
    "STEERING_MODES",
    "App",
    "Config",
    "ConfigError",
    "HealthCheck",
    "Target",
    "HOST_LOCAL_KEYS",
    "TLS_KEYS",
    "CERTIFICATE_KEYS",
    "Tls",
    "format_ports",
    "load_config",
    "load_local_config",
    "parse_config",
    "parse_config_bytes",
    "parse_fleet_config",
    "read_config_file",
    "parse_host_port",
    "summary",
]

BALANCE_MODES = ("round-robin", "least-conn", "random", "source-hash")
STEERING_MODES = ("auto", "bpf", "ports")
RELAY_MODES = ("splice", "copy", "sockmap")
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
    "Tls",
)
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
TARGET_KEYS = ("Address", "Weight", "Backup")
MAX_WEIGHT = 1000
# A probe sends its bytes with one send() on a fresh socket, whose buffer always has
# room for this much, and keeps at most this much of the reply.
MAX_PROBE_BYTES = 4096
# A config is a human-sized file: anything larger is a mistake (a log, a disk image).
MAX_CONFIG_BYTES = 16 << 20


class ConfigError(Exception):
    """One-line, human message; str(err) is what the CLI prints after 'error: '."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


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

    @property
    def address(self) -> str:
        """Canonical "host:port" (IPv6 as "[::1]:80"), the name used in metrics and admin."""
        return _join_host_port(self.host, self.port)

    def __str__(self) -> str:
        return self.address


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
    tls: Tls | None = None  # TLS termination (tlsconfig.py); None: plain TCP


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

    def port_owner(self) -> dict[int, str]:
        """Map every configured port to the name of the app that owns it; on a port
        shared by name, the default app (the one without ServerNames), else the first."""
        owner: dict[int, str] = {}
        for port, apps in self.port_apps().items():
            default = [app for app in apps if not app.server_names]
            owner[port] = (default or apps)[0].name
        return owner

    def port_apps(self) -> dict[int, list[App]]:
        """Map every configured port to the apps on it (several when shared by name)."""
        apps: dict[int, list[App]] = {}
        for app in self.apps:
            for port in app.ports:
                apps.setdefault(port, []).append(app)
        return apps

    def app(self, name: str) -> App:
        """The app called `name`; KeyError if there is none."""
        for app in self.apps:
            if app.name == name:
                return app
        raise KeyError(name)


# --------------------------------------------------------------------------- entry points


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file. Every failure, I/O included, is a ConfigError."""
    source = os.fsdecode(path)
    raw = read_config_file(path)
    if source.endswith(".toml"):  # by extension: TOML has comments, JSON has not
        return parse_config(_decode_toml(raw, source), source)
    return parse_config_bytes(raw, source)


def read_config_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a config file (regular, at most MAX_CONFIG_BYTES); ConfigError else."""
    source = os.fsdecode(path)
    try:
        return _read_regular_file(path, source)
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except PermissionError:
        raise ConfigError(f"{source}: permission denied") from None
    except (OSError, ValueError) as exc:  # ValueError: NUL byte in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{source}: cannot read the file: {reason}") from None


def _decode_toml(raw: bytes, source: str) -> object:
    import tomllib

    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid TOML: nested too deeply") from None


def parse_config_bytes(raw: bytes, source: str) -> Config:
    """Decode and validate a config document that did not come from a file (etcd);
    `source` names it in every message."""
    return parse_config(_decode_json(raw, source), source)


def parse_fleet_config(raw: bytes, source: str, local: dict[str, Any] | None = None) -> Config:
    """A fleet's config (from etcd, or to be pushed there) completed by this host's own
    settings (`local`, from load_local_config). A fleet document that sets a host-local
    setting is refused: only the host decides those."""
    data = _decode_json(raw, source)
    if isinstance(data, dict):
        for key in data:
            if key in HOST_LOCAL_KEYS:
                raise ConfigError(
                    f"{source}: {key}: a host-local setting, never taken from a fleet's config"
                    " (give it on each host: --local-config FILE)"
                )
        # Without a host's settings (a push), Admin is left to each host: port 0 is no
        # app's port, so only a host's own Admin is checked against the apps' ports.
        merged = _JsonObject({**data, **(local if local is not None else {"Admin": "127.0.0.1:0"})})
        merged.duplicates = getattr(data, "duplicates", ())
        data = merged
    return parse_config(data, source)


def load_local_config(path: str) -> dict[str, Any]:
    """The host-local settings of an instance serving a fleet's config (--local-config):
    a JSON object of HOST_LOCAL_KEYS only, validated; ConfigError otherwise."""
    data = _decode_json(read_config_file(path), path)
    try:
        if not isinstance(data, dict):
            raise _Invalid("", f"expected a JSON object at the top level, {_got(data)}")
        for key in data:
            if key in TOP_KEYS and key not in HOST_LOCAL_KEYS:
                raise _Invalid(key, "a setting of the fleet, not of one host: it belongs in etcd")
        _check_keys(data, HOST_LOCAL_KEYS)
        _parse_local_settings(data)
    except _Invalid as err:
        raise _error(path, None, err) from None
    return dict(data)


def _not_a_file(mode: int) -> str | None:
    """Why a file of this mode cannot be a config, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, expected a JSON file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), expected a JSON file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, expected a JSON file"
    if stat.S_ISSOCK(mode):
        return "is a socket, expected a JSON file"
    return "is not a regular file, expected a JSON file"


def _read_regular_file(path: str | os.PathLike[str], source: str) -> bytes:
    # A reload must never hang: reading a FIFO blocks until a writer comes, and opening
    # some devices has side effects. So stat first, open without blocking, and check
    # again what was opened (the path may have been replaced in between).
    why = _not_a_file(os.stat(path).st_mode)
    if why is None:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            why = _not_a_file(st.st_mode)
            if why is None and st.st_size <= MAX_CONFIG_BYTES:
                raw = f.read(MAX_CONFIG_BYTES + 1)  # it may have grown since fstat
                if len(raw) <= MAX_CONFIG_BYTES:
                    return raw
    if why is None:
        why = f"is larger than {MAX_CONFIG_BYTES >> 20} MiB, too large for a config file"
    raise ConfigError(f"{source}: {why}")


def parse_config(data: object, source: str = "<config>") -> Config:
    """Validate already-decoded JSON data and build a Config; raises only ConfigError."""
    try:
        return _parse_top(data, source)
    except ConfigError:
        raise
    except _Invalid as err:
        raise _error(source, None, err) from None
    except RecursionError:
        raise ConfigError(f"{source}: the config is nested too deeply") from None
    except Exception as exc:  # the contract is "only ConfigError", even if this module errs
        raise ConfigError(f"{source}: cannot validate the config ({exc!r})") from exc


def parse_host_port(text: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split "host:port" ("[v6]:port" for IPv6) for the CLI and admin endpoint.

    Returns (host without brackets, port); raises ConfigError with the reason.
    """
    if not isinstance(text, str):
        raise ConfigError(f'expected a "host:port" string, {_got(text)}')
    try:
        return _host_port(text, allow_port_zero)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# --------------------------------------------------------------------------- errors


class _Invalid(Exception):
    """A problem in one field; the caller adds the file and app to make a ConfigError."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason


def _error(source: str, where: str | None, err: _Invalid) -> ConfigError:
    parts = [source, where, err.field, err.reason]
    return ConfigError(": ".join(p for p in parts if p))


# splitlines() breaks on all of these; a CLI message must stay on one line.
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def _one_line(text: str) -> str:
    return _LINE_BREAKS.sub(lambda m: ascii(m.group())[1:-1], text)


def _q(value: str) -> str:
    """Quote user text the JSON way (double quotes, escapes) so it reads like the file."""
    return json.dumps(value, ensure_ascii=False)


def _kind(value: object) -> str:
    """The JSON name of a value's type, for "expected X, got Y"."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _num(value: float) -> str:
    """A number for a message; str() of an int of thousands of digits raises ValueError."""
    if isinstance(value, int) and not -(10**18) < value < 10**18:
        return f"<about {int(abs(value).bit_length() * math.log10(2)) + 1} digits>"
    return repr(value) if isinstance(value, float) else str(value)


def _got(value: object) -> str:
    """ "got string \"abc\"": the type, plus the value when it is short and scalar."""
    kind = _kind(value)
    if isinstance(value, str):
        shown = _q(value)
    elif isinstance(value, bool) or value is None:
        shown = json.dumps(value)
    elif isinstance(value, (int, float)):
        shown = _num(value)
    else:
        return f"got {kind}"
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"got {kind} {shown}"


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    same_case = [c for c in choices if c.lower() == word.lower()]
    close = same_case or difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {_q(close[0])}?)" if close else ""


# --------------------------------------------------------------------------- JSON decoding


class _JsonObject(dict[str, Any]):
    """A decoded JSON object that remembers keys given twice (json keeps the last silently)."""

    duplicates: tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JsonObject:
        obj = cls(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            dups = []
            for key, _ in pairs:
                if key in seen and key not in dups:
                    dups.append(key)
                seen.add(key)
            obj.duplicates = tuple(dups)
        return obj


def _decode_json(raw: bytes, source: str) -> object:
    if len(raw) > MAX_CONFIG_BYTES:  # a file is checked before it is read; etcd's value here
        raise ConfigError(
            f"{source}: larger than {MAX_CONFIG_BYTES >> 20} MiB, too large for a config"
        )
    try:
        text = raw.decode("utf-8-sig")  # tolerate a BOM written by some editors
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (bad byte at offset {exc.start})") from None
    if not text.strip():
        raise ConfigError(f"{source}: the file is empty, expected a JSON object") from None
    try:
        return json.loads(text, object_pairs_hook=_JsonObject.from_pairs)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    except ValueError:  # int() refuses numbers of thousands of digits
        raise ConfigError(f"{source}: invalid JSON: a number has too many digits") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid JSON: nested too deeply") from None


# --------------------------------------------------------------------------- structure


def _check_keys(obj: dict[Any, Any], known: Sequence[str], prefix: str = "") -> None:
    """Reject unknown keys (with a did-you-mean) and keys given twice, in file order."""
    for key in obj:
        if not isinstance(key, str):
            raise _Invalid(prefix + repr(key), "unknown key, keys must be strings")
        if key not in known:
            hint = _did_you_mean(key, known) or f" (known keys: {', '.join(known)})"
            raise _Invalid(prefix + key, "unknown key" + hint)
    duplicates = getattr(obj, "duplicates", ())
    if duplicates:
        raise _Invalid(prefix + duplicates[0], "key given more than once")


def _required(obj: dict[str, Any], key: str) -> Any:
    if key not in obj:
        raise _Invalid(key, "missing required key")
    return obj[key]


def _parse_top(data: object, source: str) -> Config:
    if not isinstance(data, dict):
        raise _Invalid("", f"expected a JSON object at the top level, {_got(data)}")
    _check_keys(data, TOP_KEYS)
    raw_apps = _required(data, "Apps")
    if not isinstance(raw_apps, (list, tuple)):
        raise _Invalid("Apps", f"expected a list of apps, {_got(raw_apps)}")
    if not raw_apps:
        raise _Invalid("Apps", "empty list, define at least one app")
    local = _parse_local_settings(data)
    drain = _duration(data.get("DrainTimeout", 30.0), "DrainTimeout", allow_zero=True)
    apps = _parse_apps(raw_apps, source)
    _check_admin_port(local["admin"], apps, explicit="Admin" in data)
    return Config(apps=apps, drain_timeout=drain, source=source, **local)


def _parse_local_settings(data: dict[str, Any]) -> dict[str, Any]:
    """The Config fields of HOST_LOCAL_KEYS, their defaults where absent."""
    local: dict[str, Any] = {
        "listen": _parse_listen(data.get("Listen", ["::"])),
        "admin": _parse_admin(data.get("Admin", "127.0.0.1:9901")),
        "admin_token_file": _parse_token_file(data.get("AdminTokenFile", DEFAULT_ADMIN_TOKEN_FILE)),
        "admin_hosts": _parse_admin_hosts(data.get("AdminHosts", [])),
        "workers": _integer(data.get("Workers", 0), "Workers", 0, MAX_WORKERS),
        "steering": _choice(data.get("Steering", "auto"), "Steering", STEERING_MODES),
        "relay": _choice(data.get("Relay", "splice"), "Relay", RELAY_MODES),
        "pipe_size": _parse_pipe_size(data.get("PipeSize", 0)),
    }
    local["user"], local["group"] = _parse_account(data.get("User"), data.get("Group"))
    local["access_log"] = _parse_access_log(data.get("AccessLog"))
    return local


def _parse_apps(raw_apps: Sequence[object], source: str) -> tuple[App, ...]:
    apps: list[App] = []
    names: dict[str, int] = {}  # app name -> index, for duplicate names
    owners: dict[int, list[App]] = {}  # port -> apps on it, for duplicate ports
    for i, raw in enumerate(raw_apps):
        try:
            app = _parse_app(raw, names)
            _check_port_sharing(app, owners)
        except _Invalid as err:
            raise _error(source, _app_label(raw, i), err) from None
        names[app.name] = i
        for port in app.ports:
            owners.setdefault(port, []).append(app)
        apps.append(app)
    return tuple(apps)


def _check_port_sharing(app: App, owners: dict[int, list[App]]) -> None:
    """Apps share a port only when the relay can tell their clients apart by TLS
    server name: all of them have ServerNames, but for at most one default."""
    for port in app.ports:
        others = owners.get(port, [])
        if not others:
            continue
        first = others[0]
        unnamed = [other for other in others if not other.server_names]
        if not app.server_names and unnamed:
            raise _Invalid(
                "Ports",
                f"port {port} is already used by app {_q(unnamed[0].name)}"
                " (apps share a port only when they route by ServerNames; at most one"
                " of them, the default, may have none)",
            )
        for other in others:
            both = sorted(set(app.server_names) & set(other.server_names))
            if both:
                raise _Invalid(
                    "ServerNames",
                    f"{_q(both[0])} is also a server name of app {_q(other.name)} on port {port}",
                )
        if (app.accept_proxy_protocol, app.proxy_senders) != (
            first.accept_proxy_protocol,
            first.proxy_senders,
        ):
            theirs = json.dumps(list(first.proxy_senders) or first.accept_proxy_protocol)
            raise _Invalid(
                "AcceptProxyProtocol",
                f"apps sharing port {port} must agree, app {_q(first.name)} has {theirs}",
            )


def _app_label(raw: object, index: int) -> str:
    """`app "web" (Apps[2])`, or just `Apps[2]` when the app has no usable name."""
    name = raw.get("Name") if isinstance(raw, dict) else None
    if isinstance(name, str) and name.strip():
        return f"app {_q(name)} (Apps[{index}])"
    return f"Apps[{index}]"


def _parse_app(raw: object, names: dict[str, int]) -> App:
    if not isinstance(raw, dict):
        raise _Invalid("", f"expected an app object, {_got(raw)}")
    _check_keys(raw, APP_KEYS)
    proxy_protocol = raw.get("ProxyProtocol")
    accept_proxy, proxy_senders = _parse_accept_proxy(raw.get("AcceptProxyProtocol", False))
    return App(
        name=_parse_name(_required(raw, "Name"), names),
        ports=_parse_ports(_required(raw, "Ports")),
        targets=_parse_targets(_required(raw, "Targets")),
        balance=_choice(raw.get("Balance", "round-robin"), "Balance", BALANCE_MODES),
        health_check=_parse_health(raw.get("HealthCheck", {})),
        connect_timeout=_duration(raw.get("ConnectTimeout", 5.0), "ConnectTimeout"),
        idle_timeout=_duration(raw.get("IdleTimeout", 3600.0), "IdleTimeout", allow_zero=True),
        max_connections=_integer(raw.get("MaxConnections", 0), "MaxConnections", 0, MAX_COUNT),
        proxy_protocol=(
            None
            if proxy_protocol is None
            else _choice(proxy_protocol, "ProxyProtocol", PROXY_PROTOCOLS)
        ),
        accept_proxy_protocol=accept_proxy,
        server_names=_parse_server_names(raw.get("ServerNames")),
        max_connections_per_source=_integer(
            raw.get("MaxConnectionsPerSource", 0), "MaxConnectionsPerSource", 0, MAX_COUNT
        ),
        panic=_boolean(raw.get("Panic", True), "Panic"),
        proxy_senders=proxy_senders,
        source_mask=_parse_source_mask(raw.get("SourceMask", {})),
        max_connections_in_preface=_integer(
            raw.get("MaxConnectionsInPreface", DEFAULT_MAX_IN_PREFACE),
            "MaxConnectionsInPreface",
            1,
            MAX_COUNT,
        ),
        allow=_parse_cidrs(raw.get("Allow", []), "Allow"),
        deny=_parse_cidrs(raw.get("Deny", []), "Deny"),
        max_connection_rate=_rate(raw.get("MaxConnectionRate", 0), "MaxConnectionRate"),
        max_connection_rate_per_source=_rate(
            raw.get("MaxConnectionRatePerSource", 0), "MaxConnectionRatePerSource"
        ),
        tls=_parse_app_tls(raw),
    )


def _parse_app_tls(raw: dict[str, Any]) -> Tls | None:
    tls = parse_tls(raw.get("Tls"))
    if tls is not None and raw.get("ServerNames") is not None:
        # The relay would have to feed the ClientHello it read to route by name
        # into the handshake: not done yet. One app's Tls picks certificates by SNI.
        raise _Invalid(
            "Tls",
            "not together with ServerNames (yet): give the names' certificates in one"
            " app's Tls.Certificates, which are chosen by SNI",
        )
    return tls


_SERVER_NAME = re.compile(r"(\*\.)?[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")


def _parse_server_names(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise _Invalid("ServerNames", f"expected a list of server names, {_got(value)}")
    if not value:
        raise _Invalid("ServerNames", "empty list, leave the key out to route without names")
    names: list[str] = []
    for i, item in enumerate(value):
        field = f"ServerNames[{i}]"
        if not isinstance(item, str):
            raise _Invalid(field, f"expected a server name string, {_got(item)}")
        name = item.lower()
        if len(name) > 255 or not _SERVER_NAME.fullmatch(name):
            raise _Invalid(
                field,
                f'{_q(item)} is not a server name ("www.example.com") or a wildcard'
                ' ("*.example.com")',
            )
        if name in names:
            raise _Invalid(field, f"{_q(item)} is listed more than once")
        names.append(name)
    return tuple(names)


def _parse_access_log(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid("AccessLog", f'expected a file path or "-" for stderr, {_got(value)}')
    if not value.strip() or "\0" in value:
        raise _Invalid("AccessLog", f'{_q(value)} is not a file path (or "-" for stderr)')
    return value


def _parse_name(value: object, names: dict[str, int]) -> str:
    if not isinstance(value, str):
        raise _Invalid("Name", f"expected a string, {_got(value)}")
    if not value.strip():
        raise _Invalid("Name", "must not be empty")
    if value != value.strip():
        raise _Invalid("Name", f"{_q(value)} has leading or trailing spaces")
    if any(ch < " " or ch == "\x7f" for ch in value):
        raise _Invalid("Name", f"{_q(value)} contains control characters")
    if "/" in value:  # the name is a path segment of the admin endpoint's URLs
        raise _Invalid("Name", f'{_q(value)} must not contain "/"')
    if value in names:
        raise _Invalid("Name", f"duplicate app name, already used by Apps[{names[value]}]")
    return value


def _parse_health(value: object) -> HealthCheck:
    if not isinstance(value, dict):
        keys = ", ".join(HEALTH_KEYS)
        raise _Invalid("HealthCheck", f"expected an object with {keys}, {_got(value)}")
    _check_keys(value, HEALTH_KEYS, prefix="HealthCheck.")
    default = HealthCheck()
    kind = _choice(value.get("Type", default.type), "HealthCheck.Type", HEALTH_TYPES)
    owners = {"Send": "send-expect", "Expect": "send-expect"}
    owners.update(dict.fromkeys(("Path", "Host", "ExpectStatus"), "http"))
    for key, owner in owners.items():
        if key in value and kind != owner:
            raise _Invalid(
                f"HealthCheck.{key}",
                f'only used when HealthCheck.Type is "{owner}", not {_q(kind)}',
            )
    send, expect = default.send, default.expect
    if kind == "send-expect":
        if "Expect" not in value:
            raise _Invalid("HealthCheck.Expect", 'missing required key for Type "send-expect"')
        send = _probe_bytes(value.get("Send", ""), "HealthCheck.Send")
        expect = _probe_bytes(value["Expect"], "HealthCheck.Expect")
        if not expect:
            raise _Invalid("HealthCheck.Expect", "must not be empty")
    return HealthCheck(
        interval=_duration(value.get("Interval", default.interval), "HealthCheck.Interval"),
        timeout=_duration(value.get("Timeout", default.timeout), "HealthCheck.Timeout"),
        rise=_integer(value.get("Rise", default.rise), "HealthCheck.Rise", 1, MAX_COUNT),
        fall=_integer(value.get("Fall", default.fall), "HealthCheck.Fall", 1, MAX_COUNT),
        type=kind,
        send=send,
        expect=expect,
        path=_http_path(value.get("Path", default.path)),
        host=_http_host(value.get("Host")),
        expect_status=_status_range(value.get("ExpectStatus", "200-399")),
    )


_ESCAPES = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\"}
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.?)", re.DOTALL)


def _probe_bytes(value: object, field: str) -> bytes:
    r"""Bytes written as text with \r \n \t \0 \\ and \xHH escapes; the rest is UTF-8."""
    if not isinstance(value, str):
        raise _Invalid(field, f"expected a string, {_got(value)}")
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(value):
        out += value[pos : match.start()].encode()
        code = match.group(1)
        if code.startswith("x"):
            out.append(int(code[1:], 16))
        elif code in _ESCAPES:
            out += _ESCAPES[code]
        else:
            what = f"unknown escape \\{code}" if code else "a lone \\ at the end"
            raise _Invalid(field, f"{what}, use \\r \\n \\t \\0 \\\\ or \\xHH")
        pos = match.end()
    out += value[pos:].encode()
    if len(out) > MAX_PROBE_BYTES:
        raise _Invalid(field, f"at most {MAX_PROBE_BYTES} bytes, got {len(out)}")
    return bytes(out)


def _http_path(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid("HealthCheck.Path", f"expected a string, {_got(value)}")
    if not value.startswith("/"):
        raise _Invalid("HealthCheck.Path", f'{_q(value)} must start with "/"')
    if any(ch <= " " or ch == "\x7f" for ch in value) or not value.isascii():
        raise _Invalid(
            "HealthCheck.Path", f"{_q(value)} must be ASCII without spaces (percent-encode)"
        )
    return value


def _http_host(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid("HealthCheck.Host", f"expected a string, {_got(value)}")
    if not value or any(ch <= " " or ch == "\x7f" for ch in value) or not value.isascii():
        raise _Invalid("HealthCheck.Host", f"{_q(value)} is not a valid Host header value")
    return value


def _status_range(value: object) -> tuple[int, int]:
    """ExpectStatus: 200, "200" or "200-399" (inclusive)."""
    field = "HealthCheck.ExpectStatus"
    if isinstance(value, int) and not isinstance(value, bool):
        first = last = value
    elif isinstance(value, str):
        match = _PORT_RANGE.fullmatch(value)
        if not match:
            raise _Invalid(field, f'{_q(value)} is not a status code or a "first-last" range')
        first = _port_value(match.group(1))
        last = _port_value(match.group(2) or match.group(1))
    else:
        raise _Invalid(field, f'expected a status code or a "first-last" range, {_got(value)}')
    for code in (first, last):
        if not 100 <= code <= 599:
            raise _Invalid(field, f"status {_num(code)} is out of range 100..599")
    if first > last:
        raise _Invalid(field, f'range "{first}-{last}" is reversed, write "{last}-{first}"')
    return first, last


# --------------------------------------------------------------------------- admission


def _parse_accept_proxy(value: object) -> tuple[bool, tuple[str, ...]]:
    """AcceptProxyProtocol: false, true (any sender: see server.py's warning), or
    the CIDRs of the balancers trusted to name the client."""
    field = "AcceptProxyProtocol"
    if isinstance(value, bool):
        return value, ()
    if not isinstance(value, (list, tuple)):
        raise _Invalid(
            field,
            f'expected true, false or a list of trusted sender CIDRs ("10.0.0.0/8"), {_got(value)}',
        )
    if not value:
        raise _Invalid(field, "empty list, write false to accept no PROXY header")
    return True, _parse_cidrs(value, field)


def _parse_cidrs(value: object, field: str) -> tuple[str, ...]:
    """A list of networks ("10.0.0.0/8", "2001:db8::/32"; a bare address is one
    host), canonical and without repeats."""
    if not isinstance(value, (list, tuple)):
        raise _Invalid(field, f'expected a list of CIDRs ("10.0.0.0/8"), {_got(value)}')
    nets: dict[str, None] = {}
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, str):
            raise _Invalid(where, f'expected a CIDR string ("10.0.0.0/8"), {_got(item)}')
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise _Invalid(
                where, f'{_q(item)} is not a CIDR ("10.0.0.0/8", "2001:db8::/32")'
            ) from None
        try:
            ipaddress.ip_network(item)
        except ValueError:
            raise _Invalid(
                where, f"{_q(item)} has bits set past its prefix, did you mean {net}?"
            ) from None
        nets[str(net)] = None
    return tuple(nets)


def _parse_source_mask(value: object) -> tuple[int, int]:
    if not isinstance(value, dict):
        example = '{"IPv4": 32, "IPv6": 64}'
        raise _Invalid("SourceMask", f"expected an object like {example}, {_got(value)}")
    _check_keys(value, ("IPv4", "IPv6"), prefix="SourceMask.")
    v4 = _integer(value.get("IPv4", 32), "SourceMask.IPv4", 1, 32)
    v6 = _integer(value.get("IPv6", 64), "SourceMask.IPv6", 1, 128)
    return v4, v6


def _rate(value: object, field: str) -> float:
    """New connections per second, 0 = unlimited."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(field, f"expected a number of connections per second, {_got(value)}")
    if not math.isfinite(value) or not 0 <= value <= MAX_RATE:
        limit = f"{MAX_RATE:.0f}"
        raise _Invalid(field, f"must be between 0 and {limit} per second, got {_num(value)}")
    return float(value)


# --------------------------------------------------------------------------- scalars


def _boolean(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(field, f"expected true or false, {_got(value)}")
    return value


def _integer(value: object, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(field, f"expected an integer, {_got(value)}")
    if not lo <= value <= hi:
        raise _Invalid(field, f"must be between {lo} and {hi}, got {_num(value)}")
    return value


_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _duration(value: object, field: str, *, allow_zero: bool = False) -> float:
    """Seconds: a number, or a string with a unit ("250ms", "2s", "5m", "1h"; none:
    seconds); finite, > 0 (>= 0 where 0 means "off") and at most a year."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise _Invalid(
                field,
                f'expected a duration such as "250ms", "2s", "5m" or a number of seconds,'
                f" got {_q(value)}",
            )
        value = float(match.group(1)) * _UNITS[match.group(2)]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(field, f"expected a number of seconds, {_got(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(field, f"must be a finite number of seconds, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise _Invalid(field, f"must be {bound} seconds, got {_num(value)}")
    if value > MAX_DURATION:
        raise _Invalid(
            field, f"must be at most {MAX_DURATION:.0f} seconds (a year), got {_num(value)}"
        )
    return float(value)


def _choice(value: object, field: str, choices: Sequence[str]) -> str:
    allowed = ", ".join(_q(c) for c in choices)
    if not isinstance(value, str):
        raise _Invalid(field, f"expected one of {allowed}, {_got(value)}")
    if value not in choices:
        hint = _did_you_mean(value, choices)
        raise _Invalid(field, f"{_q(value)} is not one of {allowed}{hint}")
    return value


def _parse_pipe_size(value: object) -> int:
    size = _integer(value, "PipeSize", 0, MAX_COUNT)
    if size and not PIPE_SIZE_MIN <= size <= PIPE_SIZE_MAX:
        raise _Invalid(
            "PipeSize",
            f"must be 0 (kernel default) or between {PIPE_SIZE_MIN} and {PIPE_SIZE_MAX} bytes,"
            f" got {size}",
        )
    return size


def _parse_account(user: object, group: object) -> tuple[str | None, str | None]:
    """User and Group name existing accounts (looked up now: a typo is an error here,
    not a proxy that cannot drop root later)."""
    if user is None:
        if group is not None:
            raise _Invalid("Group", "needs User")
        return None, None
    for field, value in (("User", user), ("Group", group)):
        if value is not None and (not isinstance(value, str) or not value):
            raise _Invalid(field, f"expected an account name, {_got(value)}")
    assert isinstance(user, str) and (group is None or isinstance(group, str))
    try:
        account(user, group)
    except KeyError as exc:
        raise _Invalid("Group" if "group" in exc.args[0] else "User", exc.args[0]) from None
    return user, group


# --------------------------------------------------------------------------- ports

_DIGITS = re.compile(r"[0-9]+")
_PORT_RANGE = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")


def _port_value(digits: str) -> int:
    # int() refuses strings of over 4300 digits; anything past 9 digits is out of range anyway
    return int(digits) if len(digits) <= 9 else 10**9


def _check_port(port: int, text: str, field: str) -> int:
    if not 1 <= port <= 65535:
        raise _Invalid(field, f"port {text} is out of range 1..65535")
    return port


def _expand_port(item: object, field: str) -> range:
    """One Ports entry: an int, or a string "7000" or "7000-7999" (inclusive)."""
    if isinstance(item, int) and not isinstance(item, bool):
        port = _check_port(item, _num(item), field)
        return range(port, port + 1)
    if not isinstance(item, str):
        raise _Invalid(field, f'expected a port number or a "first-last" range, {_got(item)}')
    match = _PORT_RANGE.fullmatch(item)
    if not match:
        raise _Invalid(field, f'{_q(item)} is not a port number or a "first-last" range')
    first_text, last_text = match.group(1), match.group(2) or match.group(1)
    first = _check_port(_port_value(first_text), first_text, field)
    last = _check_port(_port_value(last_text), last_text, field)
    if first > last:
        raise _Invalid(field, f'range {_q(item)} is reversed, write "{last}-{first}"')
    return range(first, last + 1)


def _parse_ports(value: object) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise _Invalid("Ports", f"expected a list of ports, {_got(value)}")
    if not value:
        raise _Invalid("Ports", "empty list, an app needs at least one port")
    ports: list[int] = []
    seen: set[int] = set()
    for i, item in enumerate(value):
        for port in _expand_port(item, f"Ports[{i}]"):
            if port in seen:
                raise _Invalid("Ports", f"port {port} is listed more than once")
            seen.add(port)
            ports.append(port)
    return tuple(ports)


def format_ports(ports: Iterable[int]) -> str:
    """ "5001-5003, 6000": sorted, runs of three or more compressed to first-last."""
    ordered = sorted(set(ports))
    runs: list[list[int]] = []
    for port in ordered:
        if runs and port == runs[-1][-1] + 1:
            runs[-1].append(port)
        else:
            runs.append([port])
    parts: list[str] = []
    for run in runs:
        if len(run) >= 3:
            parts.append(f"{run[0]}-{run[-1]}")
        else:
            parts.extend(str(p) for p in run)
    return ", ".join(parts)


# --------------------------------------------------------------------------- addresses

_HOSTNAME = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?")
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ipv6(text: str) -> str | None:
    """The canonical (compressed) form of an IPv6 literal, or None if it is not one."""
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def _canonical_host(host: str) -> str:
    """A hostname (lower-cased) or IPv4 literal; ValueError with the reason otherwise."""
    if _DOTTED_NUMBERS.fullmatch(host):
        # all digits: the resolver would read "10.1" or "1.2.3.999" in surprising ways
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(f"{_q(host)} is not a valid IPv4 address") from None
    if len(host) <= 253 and _HOSTNAME.fullmatch(host):
        return host.lower()
    raise ValueError(f"{_q(host)} is not a valid hostname or IP address")


def _port_text(text: str, port_text: str, allow_zero: bool) -> int:
    if not port_text:
        raise ValueError(f'{_q(text)}: missing port, expected "host:port"')
    if not _DIGITS.fullmatch(port_text):
        raise ValueError(f"{_q(text)}: port {_q(port_text)} is not a number")
    port = _port_value(port_text)
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"{_q(text)}: port {port_text} is out of range {low}..65535")
    return port


def _bracketed(text: str) -> tuple[str, str]:
    """Split "[v6]rest" into (canonical v6, rest)."""
    end = text.find("]")
    if end < 0:
        raise ValueError(f'{_q(text)}: missing "]" after the IPv6 address')
    inside, rest = text[1:end], text[end + 1 :]
    host = _ipv6(inside)
    if host is None:
        if _DOTTED_NUMBERS.fullmatch(inside):
            raise ValueError(f"{_q(text)}: brackets are only for IPv6, write IPv4 without them")
        raise ValueError(f"{_q(text)}: {_q(inside)} in brackets is not an IPv6 address")
    return host, rest


def _bare_ipv6_hint(text: str) -> ValueError:
    """The error for an IPv6 address written without brackets."""
    host, _, port_text = text.rpartition(":")
    if _ipv6(host) is not None and _DIGITS.fullmatch(port_text):
        return ValueError(
            f"{_q(text)}: IPv6 addresses need brackets, write {_q(f'[{host}]:{port_text}')}"
        )
    if _ipv6(text) is not None:
        return ValueError(
            f"{_q(text)}: IPv6 addresses need brackets and a port, like {_q(f'[{text}]:80')}"
        )
    return ValueError(f'{_q(text)}: not "host:port" (IPv6 addresses go in brackets: "[::1]:80")')


def _host_port(text: str, allow_zero: bool = False) -> tuple[str, int]:
    """Parse "host:port" or "[v6]:port"; ValueError with a one-line reason otherwise."""
    text = text.strip()
    if not text:
        raise ValueError('empty, expected "host:port"')
    if text.startswith("["):
        host, rest = _bracketed(text)
        if not rest:
            raise ValueError(f"{_q(text)}: missing port, write {_q(f'[{host}]:PORT')}")
        if not rest.startswith(":"):
            raise ValueError(f'{_q(text)}: expected ":" and a port after "]"')
        return host, _port_text(text, rest[1:], allow_zero)
    if ":" not in text:
        raise ValueError(f'{_q(text)}: missing port, expected "host:port"')
    host, _, port_text = text.rpartition(":")
    if ":" in host:
        raise _bare_ipv6_hint(text)
    if not host:
        raise ValueError(f'{_q(text)}: empty host, expected "host:port"')
    try:
        host = _canonical_host(host)
    except ValueError as exc:
        raise ValueError(f"{_q(text)}: {exc}") from None
    return host, _port_text(text, port_text, allow_zero)


def _parse_targets(value: object) -> tuple[Target, ...]:
    if not isinstance(value, (list, tuple)):
        raise _Invalid("Targets", f'expected a list of "host:port" strings, {_got(value)}')
    if not value:
        raise _Invalid("Targets", "empty list, an app needs at least one target")
    targets: list[Target] = []
    for i, item in enumerate(value):
        target = _parse_target(item, f"Targets[{i}]")
        # the address is the target's name in metrics and admin
        for first, other in enumerate(targets):
            if other.address == target.address:
                raise _Invalid(
                    f"Targets[{i}]", f"{_q(target.address)} is already listed as Targets[{first}]"
                )
        targets.append(target)
    return tuple(targets)


def _parse_target(item: object, field: str) -> Target:
    """ "host:port", or {"Address": "host:port", "Weight": 1..1000, "Backup": false}."""
    if isinstance(item, dict):
        _check_keys(item, TARGET_KEYS, prefix=field + ".")
        address = item.get("Address")
        if address is None:
            raise _Invalid(field + ".Address", "missing required key")
        address_field = field + ".Address"
        weight = _integer(item.get("Weight", 1), field + ".Weight", 1, MAX_WEIGHT)
        backup = item.get("Backup", False)
        if not isinstance(backup, bool):
            raise _Invalid(field + ".Backup", f"expected true or false, {_got(backup)}")
    else:
        address, address_field, weight, backup = item, field, 1, False
    if not isinstance(address, str):
        raise _Invalid(
            address_field,
            f'expected a "host:port" string or an object with {", ".join(TARGET_KEYS)},'
            f" {_got(address)}",
        )
    try:
        host, port = _host_port(address)
    except ValueError as exc:
        raise _Invalid(address_field, str(exc)) from None
    return Target(host, port, weight, backup)


def _listen_address(text: str) -> str:
    """One Listen entry: an address without port; ValueError with the reason otherwise."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    no_port = "give the address alone; ports come from each app's Ports"
    if text.startswith("["):
        host, rest = _bracketed(text)
        if rest:
            raise ValueError(f"{_q(text)}: {no_port}")
        return host
    host6 = _ipv6(text)
    if host6 is not None:
        return host6
    if ":" in text:
        raise ValueError(f"{_q(text)}: {no_port}")
    try:
        return _canonical_host(text)
    except ValueError as exc:
        raise ValueError(f"{_q(text)}: {exc}") from None


def _parse_listen(value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise _Invalid("Listen", f"expected an address or a list of addresses, {_got(value)}")
    if not items:
        raise _Invalid("Listen", 'empty list, give at least one address ("::" for all)')
    addresses: list[str] = []
    for i, item in enumerate(items):
        field = "Listen" if isinstance(value, str) else f"Listen[{i}]"
        if not isinstance(item, str):
            raise _Invalid(field, f"expected an address string, {_got(item)}")
        try:
            address = _listen_address(item)
        except ValueError as exc:
            raise _Invalid(field, str(exc)) from None
        if address in addresses:
            raise _Invalid(field, f"{_q(address)} is listed more than once")
        addresses.append(address)
    return tuple(addresses)


def _parse_admin(value: object) -> tuple[str, int]:
    if not isinstance(value, str):
        raise _Invalid("Admin", f'expected a "host:port" string, {_got(value)}')
    try:
        # port 0 = any free port: handy for tests running several proxies side by side
        return _host_port(value, allow_zero=True)
    except ValueError as exc:
        raise _Invalid("Admin", str(exc)) from None


def _parse_token_file(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid("AdminTokenFile", f"expected a file path, {_got(value)}")
    # Absolute: the server and the CLI must find the same file from any directory.
    if not value.startswith("/") or value.endswith("/"):
        raise _Invalid("AdminTokenFile", f"{_q(value)} is not an absolute path to a file")
    if "\0" in value:
        raise _Invalid("AdminTokenFile", f"{_q(value)} contains a NUL character")
    return value


def _parse_admin_hosts(value: object) -> tuple[str, ...]:
    """Names besides IP addresses and localhost a request's Host may give the admin
    endpoint (a DNS-rebinding page's requests name the attacker's host)."""
    if not isinstance(value, (list, tuple)):
        raise _Invalid("AdminHosts", f"expected a list of host names, {_got(value)}")
    names = []
    for item in value:
        if not isinstance(item, str):
            raise _Invalid("AdminHosts", f"expected host names (strings), {_got(item)}")
        if len(item) > 253 or not _HOSTNAME.fullmatch(item) or _DOTTED_NUMBERS.fullmatch(item):
            raise _Invalid("AdminHosts", f"{_q(item)} is not a host name")
        names.append(item.lower().removesuffix("."))
    return tuple(names)


def _check_admin_port(admin: tuple[str, int], apps: Sequence[App], explicit: bool) -> None:
    # An app listening on all addresses (or steering by port) would take the admin port.
    for app in apps:
        if admin[1] in app.ports:
            what = f"port {admin[1]}" if explicit else f"the default admin port {admin[1]}"
            fix = "choose another one" if explicit else "set Admin to another address"
            raise _Invalid("Admin", f"{what} is also a port of app {_q(app.name)}, {fix}")


# --------------------------------------------------------------------------- summary


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _wrap(label: str, text: str) -> str:
    indent = "  " + " " * len(label)
    return textwrap.fill(
        text,
        width=100,
        initial_indent="  " + label,
        subsequent_indent=indent,
        break_on_hyphens=False,
        break_long_words=False,
    )


def _target_summary(target: Target) -> str:
    notes = [f"weight {target.weight}"] if target.weight != 1 else []
    if target.backup:
        notes.append("backup")
    return f"{target.address} ({', '.join(notes)})" if notes else target.address


def _bytes_text(data: bytes) -> str:
    """Probe bytes the way they are written in the config."""
    text = data.decode("utf-8", "backslashreplace")
    return _q(text).replace("\\\\x", "\\x")


def _health_summary(hc: HealthCheck) -> str:
    what = hc.type
    if hc.type == "send-expect":
        what += f" send {_bytes_text(hc.send)} expect {_bytes_text(hc.expect)}"
    elif hc.type == "http":
        first, last = hc.expect_status
        status = str(first) if first == last else f"{first}-{last}"
        host = f" Host {hc.host}" if hc.host else ""
        what += f" GET {hc.path}{host} expect status {status}"
    return (
        f"{what}, every {_seconds(hc.interval)}, timeout {_seconds(hc.timeout)},"
        f" rise {hc.rise}, fall {hc.fall}"
    )


def _app_summary(app: App) -> list[str]:
    limit = str(app.max_connections) if app.max_connections else "unlimited"
    per_source = str(app.max_connections_per_source or "unlimited")
    idle = _seconds(app.idle_timeout) if app.idle_timeout else "off"
    names = ", ".join(app.server_names) if app.server_names else "any (no SNI routing)"
    return [
        f"app {_q(app.name)}",
        _wrap("ports:       ", f"{format_ports(app.ports)} ({plural(len(app.ports), 'port')})"),
        _wrap("targets:     ", ", ".join(_target_summary(t) for t in app.targets)),
        f"  balance:     {app.balance}",
        _wrap("health:      ", _health_summary(app.health_check)),
        f"  connections: connect timeout {_seconds(app.connect_timeout)}, idle timeout {idle},"
        f" max {limit}, proxy protocol {app.proxy_protocol or 'off'}",
        f"  clients:     max {per_source} per source (IPv4 /{app.source_mask[0]},"
        f" IPv6 /{app.source_mask[1]}), max {app.max_connections_in_preface} in preface",
        _wrap("PROXY in:    ", _proxy_in_summary(app)),
        _wrap("admission:   ", _admission_summary(app)),
        _wrap("server names:", " " + names),
    ]


def _proxy_in_summary(app: App) -> str:
    if not app.accept_proxy_protocol:
        return "not accepted"
    if not app.proxy_senders:
        return "required, from any sender"
    return "required, from " + ", ".join(app.proxy_senders)


def _admission_summary(app: App) -> str:
    def rate(value: float) -> str:
        return f"{value:g}/s" if value else "unlimited"

    allow = f"allow {plural(len(app.allow), 'network')}" if app.allow else "allow all"
    deny = f"deny {plural(len(app.deny), 'network')}" if app.deny else "deny none"
    return (
        f"{allow}, {deny}, new connections {rate(app.max_connection_rate)},"
        f" per source {rate(app.max_connection_rate_per_source)}"
    )


def _access_log_summary(path: str | None) -> str:
    if path is None:
        return "off"
    return "stderr" if path == "-" else path


def _listen_summary(address: str) -> str:
    if address == "::":
        return ":: (all IPv4 and IPv6 addresses)"
    if address == "0.0.0.0":
        return "0.0.0.0 (all IPv4 addresses)"
    return address


def summary(config: Config) -> str:
    """A multi-line human summary of a valid config, printed by `fastproxy check`."""
    n_ports = sum(len(app.ports) for app in config.apps)
    n_targets = sum(len(app.targets) for app in config.apps)
    lines = [
        f"{config.source}: OK, {plural(len(config.apps), 'app')},"
        f" {plural(n_ports, 'port')}, {plural(n_targets, 'target')}"
    ]
    for app in config.apps:
        lines.extend(_app_summary(app))
    admin = _join_host_port(*config.admin)
    if config.admin[1] == 0:
        admin += " (any free port)"
    pipe = f"{config.pipe_size} bytes" if config.pipe_size else "kernel default"
    lines += [
        "global",
        _wrap("listen:      ", ", ".join(_listen_summary(a) for a in config.listen)),
        f"  admin:       {admin}",
        f"  admin token: {config.admin_token_file}",
        *([f"  admin hosts: {', '.join(config.admin_hosts)}"] if config.admin_hosts else []),
        f"  workers:     {config.workers or 'one per CPU'}",
        f"  steering:    {config.steering}",
        f"  relay:       {config.relay}, pipe size {pipe}",
        f"  drain:       {_seconds(config.drain_timeout)}",
        f"  access log:  {_access_log_summary(config.access_log)}",
    ]
    if config.user is not None:
        lines.append(f"  user:        {config.user}" + (f":{config.group}" if config.group else ""))
    return "\n".join(lines)
