"""Health checks: active probes on each app's HealthCheck schedule (a TCP connect,
or a connect then bytes sent and a reply expected, or an HTTP GET), plus passive
evidence from real traffic (the relay's connect-failure counters), both fed through
Rise/Fall hysteresis. One thread and one selector check every target, so checks
never touch the relay's workers. The thread survives anything one probe does."""

from __future__ import annotations

import contextlib
import errno
import logging
import random
import re
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import HealthCheck
from .routing import AppRuntime, Routes, TargetRuntime

log = logging.getLogger("fastproxy")

PASSIVE_POLL = 0.2  # seconds between reads of the relay's counters
MAX_REPLY = 64 * 1024  # bytes of a reply searched for Expect or an HTTP status line
ERROR_PAUSE = 0.1  # seconds the loop rests after an unexpected error, so it never spins
# Shortages of this host, not faults of the target: such a check is not counted.
LOCAL_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
_STATUS_LINE = rb"HTTP/[0-9.]+ +([0-9]{3})"  # compiled at the first http check


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
    check: HealthCheck
    sock: socket.socket
    deadline: float
    request: bytes = b""  # still to send once connected
    connected: bool = False
    reply: bytearray = field(default_factory=bytearray)


def _request(check: HealthCheck, target: TargetRuntime) -> bytes:
    if check.type == "send-expect":
        return check.send
    if check.type == "http":
        host = check.host or target.target.address
        return (
            f"GET {check.path} HTTP/1.0\r\nHost: {host}\r\n"
            "User-Agent: fastproxy-health\r\nConnection: close\r\n\r\n"
        ).encode()
    return b""


def _judge(check: HealthCheck, reply: bytes, eof: bool) -> tuple[bool, str] | None:
    """(ok, why) once the reply decides the check, None while it may still."""
    if check.type == "send-expect":
        if check.expect in reply:
            return True, "check passed"
        if eof:
            return False, f"closed after {len(reply)} bytes without the expected reply"
    else:
        line, crlf, _ = reply.partition(b"\n")
        if crlf or eof:
            match = re.match(_STATUS_LINE, line)
            if match is None:
                return False, f"not an HTTP reply: {bytes(line[:40])!r}"
            status = int(match.group(1))
            first, last = check.expect_status
            if first <= status <= last:
                return True, "check passed"
            return False, f"HTTP status {status}, expected {first}-{last}"
    if len(reply) >= MAX_REPLY:
        return False, f"no expected reply in the first {MAX_REPLY} bytes"
    return None


def _errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


class HealthChecker:
    """Runs in its own thread; results go to Routes.set_healthy."""

    def __init__(
        self, routes: Routes, on_down: Callable[[TargetRuntime], None] | None = None
    ) -> None:
        self.routes = routes
        self.on_down = on_down
        self.checks_done = 0
        self.errors: Counter[str] = Counter()  # checks that could not run, by kind
        self._hysteresis: dict[int, Hysteresis] = {}  # by counter slot
        self._due: dict[int, float] = {}
        self._seen: dict[int, tuple[int, int]] = {}  # slot -> (connections, failures)
        self._last: dict[int, dict[str, Any]] = {}  # slot -> the last active check
        self._counts: dict[int, Counter[str]] = {}  # slot -> passed/failed
        # Whose the entries above are: a reload hands the slot of a target that
        # went away to a new one, which must start afresh.
        self._owner: dict[int, TargetRuntime] = {}
        self._stop = threading.Event()
        self._next_passive = 0.0  # when _run reads the relay's counters next
        # Made here, where a failure stops the start-up, not the thread later.
        self._sel = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, name="fastproxy-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _slot(self, target: TargetRuntime) -> int:
        """The target's counter slot, the key of everything kept for it; what was
        kept for a target that had the slot before is dropped."""
        slot = target.slot
        if self._owner.get(slot) is not target:
            self._owner[slot] = target
            for kept in (self._hysteresis, self._due, self._seen, self._last, self._counts):
                kept.pop(slot, None)
        return slot

    def report(self, target: TargetRuntime) -> dict[str, Any]:
        """The target's last active check and how many passed and failed, for /status."""
        slot = self._slot(target)
        counts = self._counts.get(slot, Counter())
        return {
            "last_check": self._last.get(slot),
            "checks_passed": counts["passed"],
            "checks_failed": counts["failed"],
        }

    # -- results ---------------------------------------------------------------

    def _record(self, app: AppRuntime, target: TargetRuntime, ok: bool, why: str) -> None:
        check = app.app.health_check
        slot = self._slot(target)
        state = self._hysteresis.get(slot)
        if state is None:
            state = self._hysteresis[slot] = Hysteresis(check.rise, check.fall)
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

    def _checked(self, app: AppRuntime, target: TargetRuntime, ok: bool, why: str) -> None:
        """The result of one active check."""
        self.checks_done += 1
        slot = self._slot(target)
        self._last[slot] = {
            "ok": ok,
            "error": None if ok else why,
            "at": round(time.time(), 3),
        }
        self._counts.setdefault(slot, Counter())["passed" if ok else "failed"] += 1
        log.debug(
            "app %s: target %s: check %s (%s)",
            app.app.name,
            target.target.address,
            "passed" if ok else "failed",
            why,
        )
        self._record(app, target, ok, why)

    def _error(self, kind: str, what: str) -> None:
        """A check that could not run: logged once per kind, counted, never fatal."""
        self.errors[kind] += 1
        if self.errors[kind] == 1:
            log.error("health checks: %s (%s); counted, logged once, checks go on", what, kind)

    def _passive(self) -> None:
        """Connect failures seen by real clients count like failed checks; real
        connections that succeeded count like passed ones."""
        for app in list(self.routes.apps.values()):
            for target in app.targets:
                slot = self._slot(target)
                stats = self.routes.stats(slot)
                now = (stats["connections"], stats["connect_failures"])
                before = self._seen.get(slot, now)
                self._seen[slot] = now
                failures = now[1] - before[1]
                for _ in range(min(failures, app.app.health_check.fall)):
                    self._record(app, target, False, "client connects failed")
                if now[0] > before[0] and not failures:
                    self._record(app, target, True, "client connects succeeded")

    # -- active checks ---------------------------------------------------------

    def _start_probe(self, sel: selectors.BaseSelector, app: AppRuntime, t: TargetRuntime) -> None:
        check = app.app.health_check
        if t.address is None:
            self._checked(app, t, False, "does not resolve")
            return
        family, ip = t.address
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            if exc.errno in LOCAL_ERRORS:  # not the target's fault: no verdict
                self._error(_errno_name(exc.errno), f"cannot open a probe socket: {exc.strerror}")
                return
            self._error(_errno_name(exc.errno or 0), f"cannot open a socket for {t.target}")
            self._checked(app, t, False, f"socket: {exc.strerror}")
            return
        try:
            sock.setblocking(False)
            code = sock.connect_ex((ip, t.target.port))
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                self._checked(app, t, False, f"connect: {_errno_name(code)}")
                return
            probe = _Probe(
                app.app.name, t, check, sock, time.monotonic() + check.timeout, _request(check, t)
            )
            sel.register(sock, selectors.EVENT_WRITE, probe)
        except BaseException:
            sock.close()
            raise

    def _step(self, sel: selectors.BaseSelector, probe: _Probe) -> None:
        """The probe's socket is ready: move it on, or finish it."""
        sock, check = probe.sock, probe.check
        if not probe.connected:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                return self._finish(sel, probe, False, f"connect: {_errno_name(code)}")
            probe.connected = True
            if check.type == "tcp":
                return self._finish(sel, probe, True, "check passed")
        try:
            if probe.request:
                probe.request = probe.request[sock.send(probe.request) :]
                if not probe.request:
                    sel.modify(sock, selectors.EVENT_READ, probe)
                return None
            if sel.get_key(sock).events != selectors.EVENT_READ:
                sel.modify(sock, selectors.EVENT_READ, probe)
                return None
            data = sock.recv(MAX_REPLY - len(probe.reply))
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            return self._finish(sel, probe, False, f"{_errno_name(exc.errno or 0)}")
        probe.reply += data
        verdict = _judge(check, bytes(probe.reply), eof=not data)
        if verdict is not None:
            self._finish(sel, probe, *verdict)
        return None

    def _timeout(self, sel: selectors.BaseSelector, probe: _Probe) -> None:
        if not probe.connected:
            why = "connect timed out"
        elif probe.request:
            why = "timed out sending"
        else:
            why = f"timed out waiting for the reply ({len(probe.reply)} bytes received)"
        self._finish(sel, probe, False, f"{why} after {probe.check.timeout:g}s")

    def _finish(self, sel: selectors.BaseSelector, probe: _Probe, ok: bool, why: str) -> None:
        sel.unregister(probe.sock)
        probe.sock.close()
        app = self.routes.apps.get(probe.app)
        if app is None or probe.target not in app.targets:
            return  # removed by a reload meanwhile
        self._checked(app, probe.target, ok, why)

    def _drop(self, sel: selectors.BaseSelector, probe: _Probe) -> None:
        """Forget a probe that failed in an unexpected way."""
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(probe.sock)
        probe.sock.close()

    def _guarded(self, action: Callable[..., object], *args: Any) -> None:
        """One target's step: whatever goes wrong is counted, the others go on."""
        try:
            action(*args)
        except Exception as exc:
            self._error(type(exc).__name__, f"unexpected error in a check: {exc!r}")
            probe = next((a for a in args if isinstance(a, _Probe)), None)
            if probe is not None:
                self._drop(args[0], probe)

    def _round(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        wake = self._next_passive
        probing = {p.target.slot for p in (k.data for k in sel.get_map().values())}
        for app in list(self.routes.apps.values()):
            interval = app.app.health_check.interval
            for t in app.targets:
                if t.admin == "disabled" or t.slot in probing:
                    continue
                # The first check of a target is spread over one interval.
                slot = self._slot(t)
                due = self._due.setdefault(slot, now + random.uniform(0, interval))
                if now >= due:
                    due = self._due[slot] = now + interval
                    self._guarded(self._start_probe, sel, app, t)
                wake = min(wake, due)
        # Sleep until the next thing due: a probe to start, a probe's deadline, or the
        # passive poll (the caller's); not a fixed short tick, which costs CPU idle.
        for key in sel.get_map().values():
            wake = min(wake, key.data.deadline)
        for key, _ in sel.select(timeout=min(max(wake - time.monotonic(), 0.0), PASSIVE_POLL)):
            self._guarded(self._step, sel, key.data)
        now = time.monotonic()
        for key in list(sel.get_map().values()):
            if now >= key.data.deadline:
                self._guarded(self._timeout, sel, key.data)

    def _run(self) -> None:
        sel = self._sel
        self._next_passive = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    self._round(sel)
                    if time.monotonic() >= self._next_passive:
                        self._passive()
                        self._next_passive = time.monotonic() + PASSIVE_POLL
                except Exception as exc:
                    self._error(type(exc).__name__, f"unexpected error: {exc!r}")
                    self._stop.wait(ERROR_PAUSE)
        finally:
            for key in list(sel.get_map().values()):
                key.data.sock.close()
            sel.close()
