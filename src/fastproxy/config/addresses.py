"""Ports (numbers and ranges) and addresses (host:port, IPv6 in brackets, hostnames
checked for syntax only), as every section writes them."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from .errors import ConfigError, _Invalid
from .values import _got, _num, _q


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
        expanded = _expand_port(item, f"Ports[{i}]")
        if not seen.isdisjoint(expanded):  # set operations: "1-10000" is no Python loop
            port = next(port for port in expanded if port in seen)
            raise _Invalid("Ports", f"port {port} is listed more than once")
        seen.update(expanded)
        ports.extend(expanded)
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


_HOSTNAME = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?")
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")


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
