"""Health checks: active TCP connects on each app's HealthCheck schedule, plus
passive evidence from real traffic (the relay's connect-failure counters), both
fed through Rise/Fall hysteresis. One thread and one selector check every target,
so checks never touch the relay's workers."""

from __future__ import annotations

import errno
import logging
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .routing import AppRuntime, Routes, TargetRuntime

log = logging.getLogger("fastproxy")

PASSIVE_POLL = 0.2  # seconds between reads of the relay's counters


class Hysteresis:
    """A target flips down after `fall` failures in a row and up after `rise`
    successes in a row, so a flapping target does not flip on every flap."""

    def __init__(self, rise: int, fall: int, up: bool = True) -> None:
        self.rise = rise
        self.fall = fall
        self.up = up
        self.streak = 0  # consecutive results against the current state

    def record(self, ok: bool) -> bool:
        """Count one result; True when the state changed."""
        if ok == self.up:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak >= (self.rise if ok else self.fall):
            self.up = ok
            self.streak = 0
            return True
        return False


@dataclass
class _Probe:
    app: str
    target: TargetRuntime
    sock: socket.socket
    deadline: float


class HealthChecker:
    """Runs in its own thread; results go to Routes.set_healthy."""

    def __init__(
        self, routes: Routes, on_down: Callable[[TargetRuntime], None] | None = None
    ) -> None:
        self.routes = routes
        self.on_down = on_down
        self.checks_done = 0
        self._hysteresis: dict[int, Hysteresis] = {}  # by counter slot
        self._due: dict[int, float] = {}
        self._seen: dict[int, tuple[int, int]] = {}  # slot -> (connections, failures)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastproxy-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    # -- results ---------------------------------------------------------------

    def _record(self, app: AppRuntime, target: TargetRuntime, ok: bool, why: str) -> None:
        check = app.app.health_check
        state = self._hysteresis.get(target.slot)
        if state is None:
            state = self._hysteresis[target.slot] = Hysteresis(check.rise, check.fall)
        state.rise, state.fall = check.rise, check.fall  # a reload may change them
        if state.record(ok):
            log.warning(
                "app %s: target %s is %s (%s)",
                app.app.name,
                target.target.address,
                "up" if ok else "down",
                why,
            )
            self.routes.set_healthy(app.app.name, target, ok)
            if not ok and self.on_down is not None:
                self.on_down(target)

    def _passive(self) -> None:
        """Connect failures seen by real clients count like failed checks; real
        connections that succeeded count like passed ones."""
        for app in list(self.routes.apps.values()):
            for target in app.targets:
                stats = self.routes.stats(target.slot)
                now = (stats["connections"], stats["connect_failures"])
                before = self._seen.get(target.slot, now)
                self._seen[target.slot] = now
                failures = now[1] - before[1]
                for _ in range(min(failures, app.app.health_check.fall)):
                    self._record(app, target, False, "client connects failed")
                if now[0] > before[0] and not failures:
                    self._record(app, target, True, "client connects succeeded")

    # -- active checks ---------------------------------------------------------

    def _start_probe(self, sel: selectors.BaseSelector, app: AppRuntime, t: TargetRuntime) -> None:
        check = app.app.health_check
        if t.address is None:
            self._record(app, t, False, "does not resolve")
            return
        family, ip = t.address
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex((ip, t.target.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.checks_done += 1
            self._record(app, t, False, f"check: {errno.errorcode.get(code, code)}")
            return
        probe = _Probe(app.app.name, t, sock, time.monotonic() + check.timeout)
        sel.register(sock, selectors.EVENT_WRITE, probe)

    def _finish_probe(self, sel: selectors.BaseSelector, probe: _Probe, timed_out: bool) -> None:
        sel.unregister(probe.sock)
        code = (
            errno.ETIMEDOUT
            if timed_out
            else probe.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        )
        probe.sock.close()
        self.checks_done += 1
        app = self.routes.apps.get(probe.app)
        if app is None or probe.target not in app.targets:
            return  # removed by a reload meanwhile
        reason = "check passed" if code == 0 else f"check: {errno.errorcode.get(code, code)}"
        self._record(app, probe.target, code == 0, reason)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        next_passive = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                probing = {p.target.slot for p in (k.data for k in sel.get_map().values())}
                for app in list(self.routes.apps.values()):
                    interval = app.app.health_check.interval
                    for t in app.targets:
                        if t.admin == "disabled" or t.slot in probing:
                            continue
                        # The first check of a target is spread over one interval.
                        due = self._due.setdefault(t.slot, now + random.uniform(0, interval))
                        if now >= due:
                            self._due[t.slot] = now + interval
                            self._start_probe(sel, app, t)
                if now >= next_passive:
                    self._passive()
                    next_passive = now + PASSIVE_POLL
                for key, _ in sel.select(timeout=0.05):
                    self._finish_probe(sel, key.data, timed_out=False)
                now = time.monotonic()
                for key in list(sel.get_map().values()):
                    if now >= key.data.deadline:
                        self._finish_probe(sel, key.data, timed_out=True)
        finally:
            for key in list(sel.get_map().values()):
                key.data.sock.close()
            sel.close()
