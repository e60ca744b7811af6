"""The top level of a config: the host-local settings (Listen, Admin, Workers, Steering,
Relay, User, AccessLog...) and what holds across apps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..control.admintoken import DEFAULT_PATH as DEFAULT_ADMIN_TOKEN_FILE
from ..control.privileges import account
from .addresses import _DOTTED_NUMBERS, _HOSTNAME, _bracketed, _canonical_host, _host_port, _ipv6
from .app import _parse_access_log, _parse_apps
from .errors import _Invalid
from .model import (
    MAX_COUNT,
    MAX_WORKERS,
    PIPE_SIZE_MAX,
    PIPE_SIZE_MIN,
    RELAY_MODES,
    SOCKMAP_REMOVED,
    STEERING_MODES,
    TOP_KEYS,
    App,
    Config,
)
from .values import _check_keys, _choice, _duration, _got, _integer, _q, _required


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
        "relay": _parse_relay(data.get("Relay", "splice")),
        "pipe_size": _parse_pipe_size(data.get("PipeSize", 0)),
    }
    local["user"], local["group"] = _parse_account(data.get("User"), data.get("Group"))
    local["access_log"] = _parse_access_log(data.get("AccessLog"))
    return local


def _parse_relay(value: object) -> str:
    if value == "sockmap":
        raise _Invalid("Relay", SOCKMAP_REMOVED)
    return _choice(value, "Relay", RELAY_MODES)


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
