"""Where the config comes from. The server asks its source for the config to serve
(at start and at every reload) and lets it call for reloads when the config changes:
a file watched with stat(), or a key in etcd shared by a fleet (cluster/source.py). Which
one serves is the orchestrator's choice (process.open_source): this module knows the
contract and the file, not etcd."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from .config import Config, load_config
from .watch import FileWatcher

Reload = Callable[[str], object]  # Server.reload: raises ReloadError when rejected


class ReloadError(Exception):
    """One-line reason a reload was rejected; the running config stays."""


Describe = Callable[[], dict[str, Any]]  # the server's state for the registration


class ConfigSource(Protocol):
    name: str  # the path or URL, for messages

    def load(self) -> Config:
        """The config to serve now; ConfigError if it is invalid."""

    def start(self, reload: Reload, describe: Describe) -> None:
        """Call `reload` whenever the config changes (from a thread of the source)."""

    def stop(self) -> None: ...

    def alive(self) -> bool:
        """False once the thread watching for changes has died (for /healthz)."""

    def gauges(self) -> dict[str, float]:
        """Metrics about the source: name (without fastproxy_) -> value."""


class FileSource:
    def __init__(self, path: str, *, watch: bool = True) -> None:
        self.name = path
        self.watch = watch  # False: only SIGHUP and the admin reload (a draft saved
        self._watcher: FileWatcher | None = None  # half way must not go live)

    def load(self) -> Config:
        return load_config(self.name)

    def start(self, reload: Reload, describe: Describe) -> None:
        if not self.watch:
            return

        def changed() -> None:
            # a rejection is logged and counted by the server; the running config stays
            with contextlib.suppress(ReloadError):
                reload("file changed")

        self._watcher = FileWatcher(self.name, changed)
        self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()

    def alive(self) -> bool:
        return self._watcher is None or self._watcher.alive()

    def gauges(self) -> dict[str, float]:
        return {}
