"""An app's `Tls` (SPEC §14): its shape, validated with the rest of the config, and its
files, loaded into the relay's TlsContext by `check`, at start and at every reload
(before anything changes, so a bad file rejects the reload and the old certificates
keep serving)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._relay import TlsContext
    from .config import App, Config

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
_HOST_NAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*\.?", re.IGNORECASE)


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


def parse_tls(value: object) -> Tls | None:
    """The app's `Tls` object, or None; config._Invalid naming the field otherwise."""
    from . import config as c  # config imports this module

    if value is None:
        return None
    if not isinstance(value, dict):
        raise c._Invalid("Tls", f"expected an object with Certificates, {c._got(value)}")
    c._check_keys(value, TLS_KEYS, prefix="Tls.")
    mode = c._choice(value.get("Mode", "terminate"), "Tls.Mode", TLS_MODES)
    tls = Tls(
        certificates=_certificates(_required(value, "Certificates", "Tls.")),
        mode=mode,
        min_version=c._choice(value.get("MinVersion", "1.2"), "Tls.MinVersion", TLS_MIN_VERSIONS),
        alpn=_alpn(value.get("Alpn", [])),
        client_ca=_path(value.get("ClientCA"), "Tls.ClientCA"),
        target_ca=_path(value.get("TargetCA"), "Tls.TargetCA"),
        target_server_name=_name(value.get("TargetServerName"), "Tls.TargetServerName"),
        handshake_timeout=c._duration(
            value.get("HandshakeTimeout", DEFAULT_HANDSHAKE_TIMEOUT), "Tls.HandshakeTimeout"
        ),
    )
    if mode == "reencrypt" and tls.target_ca is None:
        raise c._Invalid(
            "Tls.TargetCA", 'required with Mode "reencrypt" (targets are verified against it)'
        )
    if mode == "terminate" and (tls.target_ca or tls.target_server_name):
        key = "TargetCA" if tls.target_ca else "TargetServerName"
        raise c._Invalid(f"Tls.{key}", 'only with Mode "reencrypt"')
    return tls


def _required(obj: dict[str, Any], key: str, prefix: str) -> object:
    from . import config as c

    if key not in obj:
        raise c._Invalid(prefix + key, "missing required key")
    return obj[key]


def _certificates(value: object) -> tuple[TlsCertificate, ...]:
    from . import config as c

    if not isinstance(value, (list, tuple)):
        raise c._Invalid(
            "Tls.Certificates", f'expected a list of {{"Cert": FILE, "Key": FILE}}, {c._got(value)}'
        )
    if not value:
        raise c._Invalid("Tls.Certificates", "empty list, give at least one certificate")
    out = []
    for i, item in enumerate(value):
        field = f"Tls.Certificates[{i}]"
        if not isinstance(item, dict):
            raise c._Invalid(field, f'expected {{"Cert": FILE, "Key": FILE}}, {c._got(item)}')
        c._check_keys(item, CERTIFICATE_KEYS, prefix=field + ".")
        cert = _path(_required(item, "Cert", field + "."), field + ".Cert")
        key = _path(_required(item, "Key", field + "."), field + ".Key")
        assert cert is not None and key is not None
        out.append(TlsCertificate(cert, key))
    return tuple(out)


def _alpn(value: object) -> tuple[str, ...]:
    from . import config as c

    if not isinstance(value, (list, tuple)):
        raise c._Invalid("Tls.Alpn", f'expected a list of protocols ("h2"), {c._got(value)}')
    out: list[str] = []
    for i, item in enumerate(value):
        field = f"Tls.Alpn[{i}]"
        if not isinstance(item, str):
            raise c._Invalid(field, f"expected a protocol name string, {c._got(item)}")
        if not 1 <= len(item.encode()) <= 255 or not item.isprintable():
            raise c._Invalid(field, f"{c._q(item)} is not a protocol name (1 to 255 bytes)")
        if item in out:
            raise c._Invalid(field, f"{c._q(item)} is listed more than once")
        out.append(item)
    return tuple(out)


def _path(value: object, field: str) -> str | None:
    from . import config as c

    if value is None:
        return None
    if not isinstance(value, str):
        raise c._Invalid(field, f"expected a file path, {c._got(value)}")
    if not value.strip() or "\0" in value:
        raise c._Invalid(field, f"{c._q(value)} is not a file path")
    return value


def _name(value: object, field: str) -> str | None:
    from . import config as c

    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 253 or not _HOST_NAME.fullmatch(value):
        raise c._Invalid(field, f"expected a host name, {c._got(value)}")
    return value


def ktls_available() -> bool:
    """Whether this kernel has kTLS (its tls module loaded): then OpenSSL hands a
    terminated connection's records to the kernel and the relay splices them."""
    return os.path.exists("/proc/net/tls_stat")


# -- files -------------------------------------------------------------------------


def load_contexts(config: Config) -> dict[str, TlsContext]:
    """Every app's TLS, loaded from its files: {app name: TlsContext}. A file that cannot
    serve is a ConfigError naming the file, the app and the field, on one line."""
    from .config import ConfigError

    contexts = {}
    for index, app in enumerate(config.apps):
        if app.tls is None:
            continue
        try:
            contexts[app.name] = load_context(app)
        except ValueError as exc:  # TlsFileError
            field = getattr(exc, "field", "")
            reason = getattr(exc, "reason", str(exc))
            raise ConfigError(
                f'{config.source}: app "{app.name}" (Apps[{index}]): Tls.{field}: {reason}'
            ) from None
    return contexts


def load_context(app: App) -> TlsContext:
    from . import _relay

    tls = app.tls
    assert tls is not None
    kwargs: dict[str, Any] = {}
    if tls.mode == "reencrypt":
        kwargs["target_ca"] = tls.target_ca
        kwargs["target_names"] = [tls.target_server_name or t.host for t in app.targets]
    return _relay.TlsContext(
        [(c.cert, c.key) for c in tls.certificates],
        min_version=tls.min_version,
        alpn=tls.alpn,
        client_ca=tls.client_ca,
        handshake_timeout=tls.handshake_timeout,
        ktls=ktls_available(),
        **kwargs,
    )
