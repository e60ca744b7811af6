"""`fastproxy check`'s summary of a valid config: a few lines per app."""

from __future__ import annotations

import textwrap

from ..wording import plural
from .addresses import format_ports
from .model import App, Config, HealthCheck, Target, _join_host_port
from .values import _q


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _wrap(label: str, text: str) -> str:
    indent = "  " + " " * len(label)
    return textwrap.fill(
        text,
        width=100,
        initial_indent="  " + label,
        subsequent_indent=indent,
        break_on_hyphens=False,
        break_long_words=False,
    )


def _target_summary(target: Target) -> str:
    notes = [f"weight {target.weight}"] if target.weight != 1 else []
    if target.backup:
        notes.append("backup")
    return f"{target.address} ({', '.join(notes)})" if notes else target.address


def _bytes_text(data: bytes) -> str:
    """Probe bytes the way they are written in the config."""
    text = data.decode("utf-8", "backslashreplace")
    return _q(text).replace("\\\\x", "\\x")


def _health_summary(hc: HealthCheck) -> str:
    what = hc.type
    if hc.type == "send-expect":
        what += f" send {_bytes_text(hc.send)} expect {_bytes_text(hc.expect)}"
    elif hc.type == "http":
        first, last = hc.expect_status
        status = str(first) if first == last else f"{first}-{last}"
        host = f" Host {hc.host}" if hc.host else ""
        what += f" GET {hc.path}{host} expect status {status}"
    return (
        f"{what}, every {_seconds(hc.interval)}, timeout {_seconds(hc.timeout)},"
        f" rise {hc.rise}, fall {hc.fall}"
    )


def _app_summary(app: App) -> list[str]:
    limit = str(app.max_connections) if app.max_connections else "unlimited"
    per_source = str(app.max_connections_per_source or "unlimited")
    idle = _seconds(app.idle_timeout) if app.idle_timeout else "off"
    names = ", ".join(app.server_names) if app.server_names else "any (no SNI routing)"
    return [
        f"app {_q(app.name)}",
        _wrap("ports:       ", f"{format_ports(app.ports)} ({plural(len(app.ports), 'port')})"),
        _wrap("targets:     ", ", ".join(_target_summary(t) for t in app.targets)),
        f"  balance:     {app.balance}",
        _wrap("health:      ", _health_summary(app.health_check)),
        f"  connections: connect timeout {_seconds(app.connect_timeout)}, idle timeout {idle},"
        f" max {limit}, proxy protocol {app.proxy_protocol or 'off'}",
        f"  clients:     max {per_source} per source (IPv4 /{app.source_mask[0]},"
        f" IPv6 /{app.source_mask[1]}), max {app.max_connections_in_preface} in preface",
        _wrap("PROXY in:    ", _proxy_in_summary(app)),
        _wrap("admission:   ", _admission_summary(app)),
        _wrap("server names:", " " + names),
    ]


def _proxy_in_summary(app: App) -> str:
    if not app.accept_proxy_protocol:
        return "not accepted"
    if not app.proxy_senders:
        return "required, from any sender"
    return "required, from " + ", ".join(app.proxy_senders)


def _admission_summary(app: App) -> str:
    def rate(value: float) -> str:
        return f"{value:g}/s" if value else "unlimited"

    allow = f"allow {plural(len(app.allow), 'network')}" if app.allow else "allow all"
    deny = f"deny {plural(len(app.deny), 'network')}" if app.deny else "deny none"
    return (
        f"{allow}, {deny}, new connections {rate(app.max_connection_rate)},"
        f" per source {rate(app.max_connection_rate_per_source)}"
    )


def _access_log_summary(path: str | None) -> str:
    if path is None:
        return "off"
    return "stderr" if path == "-" else path


def _listen_summary(address: str) -> str:
    if address == "::":
        return ":: (all IPv4 and IPv6 addresses)"
    if address == "0.0.0.0":
        return "0.0.0.0 (all IPv4 addresses)"
    return address


def summary(config: Config) -> str:
    """A multi-line human summary of a valid config, printed by `fastproxy check`."""
    n_ports = sum(len(app.ports) for app in config.apps)
    n_targets = sum(len(app.targets) for app in config.apps)
    lines = [
        f"{config.source}: OK, {plural(len(config.apps), 'app')},"
        f" {plural(n_ports, 'port')}, {plural(n_targets, 'target')}"
    ]
    for app in config.apps:
        lines.extend(_app_summary(app))
    admin = _join_host_port(*config.admin)
    if config.admin[1] == 0:
        admin += " (any free port)"
    pipe = f"{config.pipe_size} bytes" if config.pipe_size else "kernel default"
    lines += [
        "global",
        _wrap("listen:      ", ", ".join(_listen_summary(a) for a in config.listen)),
        f"  admin:       {admin}",
        f"  admin token: {config.admin_token_file}",
        *([f"  admin hosts: {', '.join(config.admin_hosts)}"] if config.admin_hosts else []),
        f"  workers:     {config.workers or 'one per CPU'}",
        f"  steering:    {config.steering}",
        f"  relay:       {config.relay}, pipe size {pipe}",
        f"  drain:       {_seconds(config.drain_timeout)}",
        f"  access log:  {_access_log_summary(config.access_log)}",
    ]
    if config.user is not None:
        lines.append(f"  user:        {config.user}" + (f":{config.group}" if config.group else ""))
    return "\n".join(lines)
