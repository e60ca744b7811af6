"""Watches the config file and calls back when it has changed and settled.

Polling stat() catches every way a file changes, including editors that write a
new file and rename it over the old one (the inode changes), and needs nothing
from the kernel beyond stat."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger("fastproxy")

POLL = 0.25  # seconds between stat() calls
SETTLE = 0.3  # a change is acted on once the file has stayed the same this long


def _signature(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # mid-rename, or deleted: wait for it to come back
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


class FileWatcher:
    def __init__(self, path: str, on_change: Callable[[], object]) -> None:
        self.path = path
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastproxy-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        current = _signature(self.path)
        while not self._stop.wait(POLL):
            seen = _signature(self.path)
            if seen is None or seen == current:
                continue
            # Debounce: editors and `cp` write in several steps.
            while not self._stop.wait(SETTLE):
                again = _signature(self.path)
                if again == seen:
                    break
                seen = again
            if self._stop.is_set():
                return
            current = seen
            if current is not None:
                try:
                    self.on_change()
                except Exception as exc:  # the watcher must outlive any one reload
                    log.error("config reload after a file change failed: %s", exc)
