"""How an instance serving a config from etcd is set up (`fastproxy serve etcd://...`
options): known to the CLI and the orchestrator without loading the etcd source."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from .etcd import Security

DEFAULT_CACHE_DIR = "/var/lib/fastproxy"
LEASE_TTL = 10  # seconds an instance stays registered after it stops renewing


@dataclass(frozen=True)
class ClusterOptions:
    """Settings of an instance that serves a config from etcd."""

    instance_id: str | None = None  # default: hostname-pid
    cache_dir: str = DEFAULT_CACHE_DIR
    lease_ttl: int = LEASE_TTL
    security: Security = field(default_factory=Security)  # how etcd is reached
    local: dict[str, Any] = field(default_factory=dict)  # host-local settings (--local-config)

    def resolved_id(self) -> str:
        return self.instance_id or f"{socket.gethostname()}-{os.getpid()}"
