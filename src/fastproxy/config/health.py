"""An app's `HealthCheck`: its type, timing, and the probe (send/expect bytes, HTTP
path, host and accepted statuses)."""

from __future__ import annotations

import re

from .addresses import _PORT_RANGE, _port_value
from .errors import _Invalid
from .model import HEALTH_KEYS, HEALTH_TYPES, MAX_COUNT, MAX_PROBE_BYTES, HealthCheck
from .values import _check_keys, _choice, _duration, _got, _integer, _num, _q


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
_ESCAPE = r"(?s)\\(x[0-9A-Fa-f]{2}|.?)"  # compiled at first use


def _probe_bytes(value: object, field: str) -> bytes:
    r"""Bytes written as text with \r \n \t \0 \\ and \xHH escapes; the rest is UTF-8."""
    if not isinstance(value, str):
        raise _Invalid(field, f"expected a string, {_got(value)}")
    out = bytearray()
    pos = 0
    for match in re.finditer(_ESCAPE, value):
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
