"""An app's TLS files, loaded into the relay's TlsContext by `check`, at start and at
every reload (before anything changes, so a bad file rejects the reload and the old
certificates keep serving). The shape of `Tls` is parsed in config/tls.py."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._relay import TlsContext
    from .config import App, Config


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
