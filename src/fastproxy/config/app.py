"""One app of `Apps`: its name, ports, server names, targets, health check, balancing
and admission, and the rules between apps (a port is one app's, unless server names
split it)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from .addresses import _parse_ports
from .admission import _parse_accept_proxy, _parse_cidrs, _parse_source_mask
from .balancing import _parse_balancing
from .errors import _error, _Invalid
from .health import _parse_health
from .model import (
    APP_KEYS,
    BALANCE_MODES,
    DEFAULT_MAX_IN_PREFACE,
    MAX_COUNT,
    PROXY_PROTOCOLS,
    App,
    Tls,
    add_ports,
)
from .target import _parse_targets
from .tls import parse_tls
from .values import _boolean, _check_keys, _choice, _duration, _got, _integer, _q, _rate, _required


def _parse_apps(raw_apps: Sequence[object], source: str) -> tuple[App, ...]:
    apps: list[App] = []
    names: dict[str, int] = {}  # app name -> index, for duplicate names
    owners: dict[int, tuple[App, ...]] = {}  # port -> apps on it, for duplicate ports
    for i, raw in enumerate(raw_apps):
        try:
            app = _parse_app(raw, names)
            _check_port_sharing(app, owners)
        except _Invalid as err:
            raise _error(source, _app_label(raw, i), err) from None
        names[app.name] = i
        add_ports(owners, app)
        apps.append(app)
    return tuple(apps)


def _check_port_sharing(app: App, owners: dict[int, tuple[App, ...]]) -> None:
    """Apps share a port only when the relay can tell their clients apart by TLS
    server name: all of them have ServerNames, but for at most one default."""
    if owners.keys().isdisjoint(app.ports):
        return  # the usual case, told by one set operation (10,000 ports: no Python loop)
    for port in app.ports:
        others = owners.get(port, ())
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
        **_parse_balancing(raw),
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


_SERVER_NAME = r"(\*\.)?[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*"  # compiled at first use


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
        if len(name) > 255 or not re.fullmatch(_SERVER_NAME, name):
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
