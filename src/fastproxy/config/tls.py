"""An app's `Tls` (SPEC §14): its shape. Its files are loaded by fastproxy/tlsconfig.py
(the relay's own loader) in `check`, at start and at every reload."""

from __future__ import annotations

import re
from typing import Any

from .errors import _Invalid
from .model import (
    CERTIFICATE_KEYS,
    DEFAULT_HANDSHAKE_TIMEOUT,
    TLS_KEYS,
    TLS_MIN_VERSIONS,
    TLS_MODES,
    Tls,
    TlsCertificate,
)
from .values import _check_keys, _choice, _duration, _got, _q

_HOST_NAME = r"(?i)[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*\.?"  # compiled at first use


def parse_tls(value: object) -> Tls | None:
    """The app's `Tls` object, or None; config._Invalid naming the field otherwise."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid("Tls", f"expected an object with Certificates, {_got(value)}")
    _check_keys(value, TLS_KEYS, prefix="Tls.")
    mode = _choice(value.get("Mode", "terminate"), "Tls.Mode", TLS_MODES)
    tls = Tls(
        certificates=_certificates(_required(value, "Certificates", "Tls.")),
        mode=mode,
        min_version=_choice(value.get("MinVersion", "1.2"), "Tls.MinVersion", TLS_MIN_VERSIONS),
        alpn=_alpn(value.get("Alpn", [])),
        client_ca=_path(value.get("ClientCA"), "Tls.ClientCA"),
        target_ca=_path(value.get("TargetCA"), "Tls.TargetCA"),
        target_server_name=_name(value.get("TargetServerName"), "Tls.TargetServerName"),
        handshake_timeout=_duration(
            value.get("HandshakeTimeout", DEFAULT_HANDSHAKE_TIMEOUT), "Tls.HandshakeTimeout"
        ),
    )
    if mode == "reencrypt" and tls.target_ca is None:
        raise _Invalid(
            "Tls.TargetCA", 'required with Mode "reencrypt" (targets are verified against it)'
        )
    if mode == "terminate" and (tls.target_ca or tls.target_server_name):
        key = "TargetCA" if tls.target_ca else "TargetServerName"
        raise _Invalid(f"Tls.{key}", 'only with Mode "reencrypt"')
    return tls


def _required(obj: dict[str, Any], key: str, prefix: str) -> object:
    if key not in obj:
        raise _Invalid(prefix + key, "missing required key")
    return obj[key]


def _certificates(value: object) -> tuple[TlsCertificate, ...]:
    if not isinstance(value, (list, tuple)):
        raise _Invalid(
            "Tls.Certificates", f'expected a list of {{"Cert": FILE, "Key": FILE}}, {_got(value)}'
        )
    if not value:
        raise _Invalid("Tls.Certificates", "empty list, give at least one certificate")
    out = []
    for i, item in enumerate(value):
        field = f"Tls.Certificates[{i}]"
        if not isinstance(item, dict):
            raise _Invalid(field, f'expected {{"Cert": FILE, "Key": FILE}}, {_got(item)}')
        _check_keys(item, CERTIFICATE_KEYS, prefix=field + ".")
        cert = _path(_required(item, "Cert", field + "."), field + ".Cert")
        key = _path(_required(item, "Key", field + "."), field + ".Key")
        assert cert is not None and key is not None
        out.append(TlsCertificate(cert, key))
    return tuple(out)


def _alpn(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise _Invalid("Tls.Alpn", f'expected a list of protocols ("h2"), {_got(value)}')
    out: list[str] = []
    for i, item in enumerate(value):
        field = f"Tls.Alpn[{i}]"
        if not isinstance(item, str):
            raise _Invalid(field, f"expected a protocol name string, {_got(item)}")
        if not 1 <= len(item.encode()) <= 255 or not item.isprintable():
            raise _Invalid(field, f"{_q(item)} is not a protocol name (1 to 255 bytes)")
        if item in out:
            raise _Invalid(field, f"{_q(item)} is listed more than once")
        out.append(item)
    return tuple(out)


def _path(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(field, f"expected a file path, {_got(value)}")
    if not value.strip() or "\0" in value:
        raise _Invalid(field, f"{_q(value)} is not a file path")
    return value


def _name(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 253 or not re.fullmatch(_HOST_NAME, value):
        raise _Invalid(field, f"expected a host name, {_got(value)}")
    return value
