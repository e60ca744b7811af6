"""What of a running proxy's settings may change, and how: the command line's
overrides of the config (Options), the settings only a restart applies (a reload keeps
the running ones and names them), and the warnings a config earns at every start and
reload."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, NamedTuple

from .config import Config

log = logging.getLogger("fastproxy")

# Settings a running relay cannot change: a reload keeps the old ones (and says so),
# by their attribute and by their name in the config.
RESTART_ONLY = {
    "listen": "Listen",
    "workers": "Workers",
    "steering": "Steering",
    "relay": "Relay",
    "pipe_size": "PipeSize",
    "admin": "Admin",
    "admin_token_file": "AdminTokenFile",
    "user": "User",
    "group": "Group",
}


def warn_any_proxy_sender(config: Config) -> None:
    """`AcceptProxyProtocol: true` lets anyone who reaches the port name any client
    address (SPEC §12): said once per start or reload, naming the apps."""
    apps = [a.name for a in config.apps if a.accept_proxy_protocol and not a.proxy_senders]
    if apps:
        log.warning(
            "AcceptProxyProtocol is true for %s: any sender may claim any client address"
            ' (list the trusted senders instead, e.g. ["10.0.0.0/8"])',
            ", ".join(f'app "{name}"' for name in apps),
        )


# A NamedTuple rather than a frozen dataclass: no methods compiled at import (start-up).
class Options(NamedTuple):
    """Command-line overrides of the config's settings; None keeps the config's."""

    steering: str | None = None
    workers: int | None = None
    relay: str | None = None
    pipe_size: int | None = None
    admin: tuple[str, int] | None = None

    def apply(self, config: Config) -> Config:
        changes: dict[str, Any] = {
            key: getattr(self, key)
            for key in ("steering", "workers", "relay", "pipe_size", "admin")
            if getattr(self, key) is not None
        }
        return replace(config, **changes) if changes else config


def keep_restart_only(new: Config, running: Config) -> tuple[Config, list[str]]:
    """`new` with the running values of what only a restart changes, and the config
    names of those that differ (each logged once)."""
    kept = {}
    for key, name in RESTART_ONLY.items():
        if getattr(new, key) != getattr(running, key):
            log.warning("reload: %s changed; it takes effect only after a restart", name)
            kept[key] = getattr(running, key)
    pending = sorted(RESTART_ONLY[key] for key in kept)
    return (replace(new, **kept) if kept else new), pending
