"""Runtime target state kept across restarts (issue 23), as HAProxy's server-state
file does: what an operator set at run time (drain, disable, weight), per app and
target, with the target's config entry it was set under. At start (and on a
takeover) an entry comes back only if the config still says the same of that target;
a config that changes the target, or drops it, drops the entry."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from ..config import Target
from .routing import Routes

log = logging.getLogger("fastproxy.targets.state")
FILE = "target-state.json"


def _fingerprint(target: Target) -> list[Any]:
    return [target.address, target.weight, target.backup, target.max_connections,
            target.soft_limit]  # fmt: skip


class TargetStateStore:
    def __init__(self, directory: str | None) -> None:
        self.path = os.path.join(directory, FILE) if directory else None
        self._failed = False  # a write failed: said once

    def restore(self, routes: Routes) -> None:
        """Put back what was saved for targets the config has not changed since."""
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as f:
                saved = json.loads(f.read(1 << 24))
            apps = saved["apps"]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("target state: %s unreadable, ignored: %s", self.path, exc)
            return
        with routes.lock:
            for runtime in routes.apps.values():
                entries = apps.get(runtime.app.name) if isinstance(apps, dict) else None
                if not isinstance(entries, dict):
                    continue
                changed = False
                for target in runtime.targets:
                    entry = entries.get(target.target.address)
                    if not isinstance(entry, dict):
                        continue
                    if entry.get("config") != _fingerprint(target.target):
                        log.info(
                            "app %s: target %s: the config changed it, its saved runtime"
                            " state is dropped",
                            runtime.app.name,
                            target.target.address,
                        )
                        continue
                    admin, weight = entry.get("admin"), entry.get("weight")
                    if admin in ("draining", "disabled", None):
                        target.admin = admin
                    if weight is None or (isinstance(weight, int) and 1 <= weight <= 1000):
                        target.weight = weight
                    log.info(
                        "app %s: target %s: runtime state restored (%s, weight %s)",
                        runtime.app.name,
                        target.target.address,
                        admin or "enabled",
                        weight if weight is not None else "from the config",
                    )
                    changed = True
                if changed:
                    routes.publish(runtime)
        self.save(routes)  # without the entries dropped

    def save(self, routes: Routes) -> None:
        """Write what operators set now (atomically); entries of targets the config no
        longer has go."""
        if self.path is None:
            return
        apps: dict[str, dict[str, Any]] = {}
        with routes.lock:
            for runtime in routes.apps.values():
                for t in runtime.targets:
                    if t.admin is not None or t.weight is not None:
                        apps.setdefault(runtime.app.name, {})[t.target.address] = {
                            "admin": t.admin,
                            "weight": t.weight,
                            "config": _fingerprint(t.target),
                        }
        tmp = self.path + ".tmp"
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"apps": apps}, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.error("target state: cannot write %s: %s (kept in memory)", self.path, exc)
            self._failed = True
