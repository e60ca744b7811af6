"""The apps and targets part of /status (and `fastproxy status`): each app's counters,
each target's state, limits, health and counters, read from the relay's slots."""

from __future__ import annotations

from typing import Any

from .health import HealthChecker
from .routing import Routes


def app_reports(routes: Routes, health: HealthChecker) -> list[dict[str, Any]]:
    """One record per app, in the order the config lists them."""
    apps = []
    with routes.lock:
        runtimes = list(routes.apps.values())
    for runtime in runtimes:
        stats = routes.stats(runtime.slot)
        targets = []
        for t in runtime.targets:
            tstats = routes.stats(t.slot)
            targets.append(
                {
                    "address": t.target.address,
                    "state": t.state,
                    "weight": t.weight or t.target.weight,
                    "config_weight": t.target.weight,
                    "backup": t.target.backup,
                    "max_connections": t.target.max_connections,
                    "soft_limit": t.target.soft_limit,
                    "ejected": bool(t.ejected_until),
                    "ejections": t.ejections,
                    **health.report(t),
                    "resolved": t.address[1] if t.address else None,
                    "active": tstats["active"],
                    "connections": tstats["connections"],
                    "connect_failures": tstats["connect_failures"],
                    "bytes_in": tstats["bytes_in"],
                    "bytes_out": tstats["bytes_out"],
                }
            )
        apps.append(
            {
                "name": runtime.app.name,
                "ports": sorted(runtime.app.ports),
                "balance": runtime.app.balance,
                "active": stats["active"],
                "connections": stats["connections"],
                "bytes_in": stats["bytes_in"],
                "bytes_out": stats["bytes_out"],
                "no_target": stats["no_target"],
                "rejected": stats["rejected"],
                "local_errors": stats["local_errors"],
                "targets": targets,
            }
        )
    return apps
