"""Configuration: parse and validate the JSON config (SPEC section 1).

Every problem becomes a ConfigError whose text is one line naming the file, the app and
the field, for example::

    proxy.json: app "b" (Apps[1]): Ports: port 5001 is already used by app "a"

Nothing here touches the network: hostnames are checked for syntax only. They are resolved
by the server at run time, where an unresolvable target is a down target, not an error.

The package, by section of the config (each module one section, lower ones first):

    errors.py     ConfigError and the one-line message of a field's problem
    model.py      the keys, modes and limits; the dataclasses of a parsed config
    values.py     scalar values: booleans, bounded integers, durations, choices
    addresses.py  ports and ranges, host:port, IPv6, hostnames
    target.py     an app's Targets
    health.py     an app's HealthCheck
    admission.py  an app's PROXY senders, Allow / Deny, per-source rates
    balancing.py  an app's target-aware settings: keepalive, lifetimes, OnTargetDown,
                  QueueTimeout, SlowStart, Outlier
    tls.py        an app's Tls (its files: fastproxy/tlsconfig.py)
    app.py        one app, and the rules between apps (ports, server names)
    top.py        the top level and the host-local settings
    files.py      the entry points: files (JSON, TOML), fleet documents, parse_config
    summary.py    `fastproxy check`'s summary
"""

from __future__ import annotations

from .addresses import format_ports, parse_host_port
from .errors import ConfigError
from .files import (
    load_config,
    load_local_config,
    parse_config,
    parse_config_bytes,
    parse_fleet_config,
    read_config_file,
)
from .model import (
    APP_KEYS,
    BALANCE_MODES,
    CERTIFICATE_KEYS,
    DEFAULT_MAX_IN_PREFACE,
    HEALTH_KEYS,
    HEALTH_TYPES,
    HOST_LOCAL_KEYS,
    KEEPALIVE_KEYS,
    MAX_CONFIG_BYTES,
    MAX_COUNT,
    MAX_DURATION,
    MAX_PROBE_BYTES,
    MAX_RATE,
    MAX_WEIGHT,
    MAX_WORKERS,
    ON_TARGET_DOWN,
    OUTLIER_KEYS,
    PIPE_SIZE_MAX,
    PIPE_SIZE_MIN,
    PROXY_PROTOCOLS,
    RELAY_MODES,
    SOCKMAP_REMOVED,
    STEERING_MODES,
    TARGET_KEYS,
    TLS_KEYS,
    TOP_KEYS,
    App,
    Config,
    HealthCheck,
    Keepalive,
    Outlier,
    Target,
    Tls,
    TlsCertificate,
)
from .summary import summary

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
    "Keepalive",
    "Outlier",
    "Target",
    "HOST_LOCAL_KEYS",
    "format_ports",
    "load_config",
    "load_local_config",
    "parse_config",
    "parse_config_bytes",
    "parse_fleet_config",
    "read_config_file",
    "parse_host_port",
    "summary",
    "SOCKMAP_REMOVED",
    "MAX_WORKERS",
    "PIPE_SIZE_MIN",
    "PIPE_SIZE_MAX",
    "MAX_DURATION",
    "MAX_COUNT",
    "DEFAULT_MAX_IN_PREFACE",
    "MAX_RATE",
    "TOP_KEYS",
    "APP_KEYS",
    "HEALTH_KEYS",
    "TARGET_KEYS",
    "KEEPALIVE_KEYS",
    "OUTLIER_KEYS",
    "ON_TARGET_DOWN",
    "TLS_KEYS",
    "CERTIFICATE_KEYS",
    "Tls",
    "TlsCertificate",
    "MAX_WEIGHT",
    "MAX_PROBE_BYTES",
    "MAX_CONFIG_BYTES",
]
