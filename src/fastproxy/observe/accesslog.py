"""The access log (SPEC section 9): one JSON line per connection when it ends.

The relay's workers fill lock-free rings (relay/accesslog.pxi); a thread here drains
them every 100 ms and writes the lines. The file is opened non-blocking: a slow or
stuck destination (a FIFO nobody reads) holds lines in a bounded buffer, then drops
them, counted, and never slows the relay. reopen() (SIGUSR1) opens the path again
after logrotate moved the file away.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from typing import Any

from .. import _relay
from ..targets.routing import Routes

log = logging.getLogger("fastproxy")

DRAIN_INTERVAL = 0.1  # seconds between drains of the rings
PENDING_MAX = 1 << 20  # bytes of lines held while the destination cannot take them
STDERR = "-"


def _tls_fields(tls: tuple[str | None, str, str | None]) -> str:
    """A TLS client's server name, protocol version and cipher (relay/tls.pxi)."""
    sni, version, cipher = tls
    return f',"sni":{json.dumps(sni)},"tls_version":"{version}","cipher":{json.dumps(cipher)}'


def _client(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class AccessLog:
    """Owned by the server; configure() starts, retargets or stops it."""

    def __init__(self, relay: _relay.Relay, routes: Routes) -> None:
        self.relay = relay
        self.routes = routes
        self.path: str | None = None
        self.unwritten = 0  # lines that could not be written (ring drops are the relay's)
        self._fd: int | None = None
        self._pending = bytearray()
        self._open_failed = False
        self._names: dict[int, str] = {}  # slot -> its JSON text
        self._second = -1  # the time stamp's whole second, formatted once
        self._stamp = ""
        self._reopen = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- control (orchestrator thread) ----------------------------------------

    def configure(self, path: str | None) -> None:
        """Log to path ("-": stderr), or stop logging (None)."""
        if path == self.path:
            return
        if path is None:
            self.close()
            return
        self.path = path
        self._reopen.set()
        if self._thread is None:
            self.relay.set_access_log(True)
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="fastproxy-access-log", daemon=True
            )
            self._thread.start()

    def reopen(self) -> None:
        """Open the path again at the next drain (SIGUSR1, after logrotate)."""
        self._reopen.set()

    def close(self) -> None:
        """Write what the rings hold, then stop (call after the relay stopped, to
        log the connections the stop closed)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.relay.set_access_log(False)
        self._close_file()
        self.path = None

    def dropped(self) -> int:
        """Lines lost: ring overflows in the relay, and lines that could not be written."""
        return self.relay.access_log_dropped() + self.unwritten

    # -- the drain thread -------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(DRAIN_INTERVAL):
            self.flush()
        self.flush()

    def flush(self) -> None:
        if self._reopen.is_set():
            self._reopen.clear()
            self._close_file()
        lines = [self._line(rec) for rec in self.relay.drain_access_log()]
        if self._fd is None:
            self._open()
        if self._fd is None:
            self.unwritten += len(lines)
            return
        for line in lines:
            if len(self._pending) + len(line) > PENDING_MAX:
                self.unwritten += 1
            else:
                self._pending += line
        self._write()

    def _write(self) -> None:
        assert self._fd is not None
        try:
            while self._pending:
                written = os.write(self._fd, self._pending)
                del self._pending[:written]
        except BlockingIOError:
            pass  # a slow reader: the rest waits for the next drain
        except OSError as exc:
            lost = self._pending.count(b"\n")
            self.unwritten += lost
            self._pending.clear()
            log.warning("access log %s: %d lines lost: %s", self.path, lost, exc.strerror)
            self._close_file()

    def _open(self) -> None:
        if self.path == STDERR:
            self._fd = 2
            return
        assert self.path is not None
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, flags, 0o644)
            self._open_failed = False
        except OSError as exc:
            if not self._open_failed:  # once per failure, not every 100 ms
                log.warning("access log %s: cannot open: %s", self.path, exc.strerror)
            self._open_failed = True

    def _close_file(self) -> None:
        if self._fd is not None and self._fd != 2:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None

    def _line(self, rec: tuple[Any, ...]) -> bytes:
        # Formatted by hand from cached pieces: json.dumps and datetime per line cost
        # more than the relay spends on the whole connection.
        (time_ns, duration_ms, bytes_in, bytes_out, app_slot, tgt_slot, port, result,
         attempts, tls, client_ip, client_port) = rec  # fmt: skip
        seconds, ns = divmod(time_ns, 1_000_000_000)
        if seconds != self._second:
            self._second = seconds
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        return (
            f'{{"time":"{self._stamp}.{ns // 1000:06d}Z","app":{self._name(app_slot, 1)},'
            f'"port":{port},"client":"{_client(client_ip, client_port)}",'
            f'"target":{self._name(tgt_slot, 2)},"bytes_in":{bytes_in},'
            f'"bytes_out":{bytes_out},"duration":{duration_ms / 1000},'
            f'"result":"{_relay.ACCESS_RESULTS[result]}","connect_attempts":{attempts}'
            f"{_tls_fields(tls) if tls else ''}}}\n"
        ).encode()

    def _name(self, slot: int, field: int) -> str:
        """The JSON text of an app name (field 1) or target address (field 2)."""
        text = self._names.get(slot)
        if text is None:
            key = self.routes.slot_keys.get(slot) if slot != _relay.NO_SLOT_ID else None
            text = json.dumps(key[field]) if key else "null"
            if key:  # slots are never reused: the name stays right
                self._names[slot] = text
        return text
