"""Outlier ejection (issue 23). The relay counts each target's consecutive failures
where they happen (connects that fail, resets before the target's first byte;
relay/outlier.pxi) and wakes this thread through an eventfd when one crosses its
app's ConsecutiveFailures. What needs the whole app is decided here: at most
MaxEjectedPercent of an app's targets out at once, and an ejection time of
BaseEjection times the number of recent ejections (one forgiven per 10 s, or
BaseEjection if longer, spent back in; Envoy forgives one per interval). An ejected
target is down: OnTargetDown close applies, SlowStart ramps it back, and when every
target is down the app's panic mode still tries them."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time

from .routing import Routes, TargetRuntime

log = logging.getLogger("fastproxy.targets.outlier")
LONGEST_EJECTION = 300.0  # seconds, however many ejections (unless BaseEjection is longer)
FORGIVE_AFTER = 10.0  # seconds back in (or BaseEjection, if longer) that forgive one ejection


class OutlierDetector:
    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastproxy-outlier", daemon=True)
        self._level: dict[int, int] = {}  # slot -> ejections not yet forgiven
        self._back: dict[int, float] = {}  # slot -> when it last came back

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        os.eventfd_write(self.routes.relay.outlier_fd, 1)
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        fd = self.routes.relay.outlier_fd
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([fd], [], [], self._until_next_return())
                if readable:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(fd)
                self._round(time.monotonic())
            except Exception:  # a helper thread logs and goes on
                log.exception("outlier detection: unexpected error; going on")
                self._stop.wait(1)

    def _until_next_return(self) -> float:
        pending = [
            t.ejected_until
            for app in list(self.routes.apps.values())
            for t in app.targets
            if t.ejected_until
        ]
        return max(0.0, min(pending) - time.monotonic()) if pending else 5.0

    def _round(self, now: float) -> None:
        relay = self.routes.relay
        with self.routes.lock:
            for runtime in list(self.routes.apps.values()):
                rules = runtime.app.outlier
                for target in runtime.targets:
                    if target.ejected_until and target.ejected_until <= now:
                        self._return(runtime.app.name, target, now)
                    if rules is None or not relay.outlier_take(target.slot, False):
                        continue
                    ejected = sum(1 for t in runtime.targets if t.ejected_until)
                    relay.outlier_take(target.slot, True)  # counts start again
                    if target.ejected_until:
                        continue
                    if (ejected + 1) * 100 > len(runtime.targets) * rules.max_ejected_percent:
                        log.warning(
                            "app %s: target %s failed %d times in a row; not ejected:"
                            " MaxEjectedPercent %d%% reached",
                            runtime.app.name,
                            target.target.address,
                            rules.consecutive_failures,
                            rules.max_ejected_percent,
                        )
                        continue
                    self._eject(runtime.app.name, target, rules.base_ejection, now)

    def _eject(self, app_name: str, target: TargetRuntime, base: float, now: float) -> None:
        level = self._level.get(target.slot, 0)
        back = self._back.get(target.slot)
        if back is not None:
            level = max(0, level - int((now - back) // max(FORGIVE_AFTER, base)))
        level += 1
        self._level[target.slot] = level
        seconds = min(base * level, max(LONGEST_EJECTION, base))
        target.ejections += 1
        log.warning(
            "app %s: target %s ejected for %g s (%d failures in a row, ejection %d)",
            app_name,
            target.target.address,
            seconds,
            self.routes.stats(target.slot)["consecutive_failures"] or 0,
            level,
        )
        self.routes.set_ejected(app_name, target, now + seconds)

    def _return(self, app_name: str, target: TargetRuntime, now: float) -> None:
        self._back[target.slot] = now
        log.warning("app %s: target %s back from ejection", app_name, target.target.address)
        self.routes.set_ejected(app_name, target, 0.0)
