"""An instance's registration in etcd: PREFIX/instances/ID under a lease that a thread
keeps alive, holding the record `fastproxy cluster status` reads (SPEC section 8).
If the instance dies, the lease expires and the record goes with it."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from .. import __version__
from ..config import ConfigError
from ..failpoints import failpoint
from .etcd import Etcd, EtcdError, EtcdUnreachable, EtcdURL, Security

log = logging.getLogger("fastproxy")

BACKOFF_MIN, BACKOFF_MAX = 0.2, 3.0  # seconds between attempts while etcd is away


def backoff(attempt: int) -> float:
    return float(min(BACKOFF_MAX, BACKOFF_MIN * 2**attempt))


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Membership:
    def __init__(self, url: EtcdURL, instance_id: str, ttl: int, security: Security) -> None:
        self.url = url
        self.security = security
        self.key = url.instances_prefix + instance_id
        self.ttl = ttl
        self.record: dict[str, Any] = {
            "id": instance_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "config_revision": 0,
            "applied_at": None,
            "steering": None,
            "healthy": False,
            "rejected_revision": None,
            "rejected_error": None,
        }
        self._describe: Any = dict
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lease: int | None = None
        self._thread = threading.Thread(target=self._run, name="fastproxy-lease", daemon=True)

    def update(self, **fields: Any) -> None:
        """Change the record; it is written at once."""
        with self._lock:
            self.record.update(fields)
        self._wake.set()

    def start(self, describe: Any) -> None:
        self._describe = describe
        self._thread.start()

    def stop(self) -> None:
        """Leave the cluster now rather than when the lease runs out."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(2)
        if self._lease is not None:
            try:
                Etcd(self.url, self.security, timeout=1.0).revoke(self._lease)
            except (EtcdError, ConfigError) as exc:
                log.warning("etcd: could not withdraw the registration: %s", exc)

    def _snapshot(self) -> dict[str, Any]:
        with self._lock:
            record = dict(self.record)
        record.update(self._describe())
        return record

    def _run(self) -> None:
        """Grant, write, renew every third of the TTL; on any failure back off and
        start over. Never ends before stop() (SPEC section 10)."""
        etcd = Etcd(self.url, self.security)
        written: dict[str, Any] | None = None
        renew_at = 0.0
        attempt = 0
        while not self._stop.is_set():
            try:
                failpoint("etcd.lease")
                if self._lease is None:
                    self._lease = etcd.grant(self.ttl)
                    written = None
                    renew_at = time.monotonic() + self.ttl / 3
                    log.info("etcd: registered as %s (ttl %ds)", self.key, self.ttl)
                elif time.monotonic() >= renew_at:
                    if etcd.keepalive(self._lease) <= 0:
                        log.warning("etcd: our lease expired; registering again")
                        self._lease = None
                        continue
                    renew_at = time.monotonic() + self.ttl / 3
                record = self._snapshot()
                if record != written:
                    etcd.put_with_lease(self.key, json.dumps(record).encode(), self._lease)
                    written = record
                attempt = 0
                self._wake.wait(max(0.0, renew_at - time.monotonic()))
                self._wake.clear()
                continue
            except EtcdUnreachable as exc:
                written = None  # write it again once etcd is back
                reason = str(exc)
            except EtcdError as exc:  # etcd answered: the lease is gone or refused
                self._lease, written = None, None
                reason = str(exc)
            except Exception as exc:
                log.error("etcd: registration: unexpected error: %s: %s", type(exc).__name__, exc)
                reason = repr(exc)
            wait = backoff(attempt)
            attempt += 1
            log.warning("etcd: registration: %s; retry %d in %.1fs", reason, attempt, wait)
            self._stop.wait(wait)
