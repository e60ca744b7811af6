"""The config of a fleet, read from PREFIX/config in etcd and watched (SPEC section 8).

A change goes through the server's reload (validate, apply the difference, or reject
and keep serving). The document is completed by the host's own settings (SPEC section
12), which it may not set itself. The last applied document is cached on disk, so an
instance that starts while etcd is away still serves what it served before; the cache
is believed only where no one but root and the proxy's user could have written it.

etcd3gw's watch tells its caller neither that the stream broke nor that etcd cancelled
it (compaction of the revision it started from), so each watch is bounded
(WATCH_CYCLE) and followed by a read: a lost or compacted watch, or etcd gone and back,
costs at most one cycle, and no update is missed because each watch starts at the
revision after the last one seen."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import threading
import time
from typing import Any

from ..config import MAX_CONFIG_BYTES, Config, ConfigError, parse_fleet_config
from ..control.privileges import account
from ..failpoints import failpoint
from ..sources import Describe, Reload, ReloadError
from .etcd import Document, Etcd, EtcdError, EtcdURL
from .membership import Membership, backoff, now_iso
from .options import ClusterOptions

log = logging.getLogger("fastproxy")

WATCH_CYCLE = 3.0  # seconds one watch lasts before a read checks on etcd and the key


def proxy_uid(local: dict[str, Any]) -> int:
    """The uid the proxy runs as once serving: User's when root drops to it, else ours."""
    if local.get("User") and os.geteuid() == 0:
        with contextlib.suppress(KeyError):  # the server refuses to start, with the reason
            return account(local["User"], local.get("Group")).uid
    return os.geteuid()


def _unsafe(st: os.stat_result, what: str, owner: int) -> str | None:
    """Why a file or directory of the cache may have been planted, or None."""
    if st.st_uid not in (0, owner):
        return f"{what} is owned by uid {st.st_uid}, not root or the proxy's user (uid {owner})"
    if st.st_mode & 0o022:
        return f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


class ConfigCache:
    """The last applied document of one PREFIX, in a file of its own under `directory`
    (0700, owned by the proxy's user `owner`; the file 0600). Checked like the BPF pin
    directory: a cache someone else could have written would let them choose the
    config an instance starts on while etcd is away."""

    def __init__(self, directory: str, url: EtcdURL, owner: int) -> None:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", url.prefix.strip("/"))
        self.directory = directory
        self.path = os.path.join(directory, f"etcd-{slug}.json")
        self.owner = owner
        self._warned = False

    def prepare(self) -> None:
        """Before privileges are dropped: the directory, made the proxy's user's (as
        systemd's StateDirectory= may hand it over root-owned)."""
        with contextlib.suppress(FileExistsError):
            os.makedirs(self.directory, mode=0o700)
        with contextlib.suppress(OSError):  # refused again, with the reason, when used
            st = os.lstat(self.directory)
            if stat.S_ISDIR(st.st_mode) and _unsafe(st, "", self.owner) is None:
                if st.st_uid != self.owner and os.geteuid() == 0:
                    os.chown(self.directory, self.owner, -1)
                os.chmod(self.directory, 0o700)

    def _check_directory(self) -> str | None:
        st = os.lstat(self.directory)
        if not stat.S_ISDIR(st.st_mode):
            return f"{self.directory} is not a directory"
        return _unsafe(st, f"its directory {self.directory}", self.owner)

    def read(self) -> Document | None:
        try:
            why = self._check_directory()
            if why is None:
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                with open(os.open(self.path, flags), "rb") as f:
                    st = os.fstat(f.fileno())
                    if not stat.S_ISREG(st.st_mode):
                        why = "not a regular file"
                    else:
                        why = _unsafe(st, "it", self.owner)
                    if why is None:
                        data = json.loads(f.read(2 * MAX_CONFIG_BYTES))
                        return Document(data["config"].encode(), int(data["revision"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            why = str(exc)
        log.warning("ignoring the config cache %s: %s", self.path, why)
        return None

    def write(self, doc: Document) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            why = self._check_directory()
            if why is not None:
                raise OSError(why)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with open(os.open(tmp, flags, 0o600), "w", encoding="utf-8") as f:
                json.dump({"revision": doc.revision, "config": doc.value.decode()}, f)
            os.replace(tmp, self.path)
        except (OSError, UnicodeDecodeError) as exc:
            if not self._warned:  # once: the proxy works without it
                log.warning("cannot cache the config in %s: %s", self.path, exc)
                self._warned = True


class EtcdSource:
    def __init__(self, url: EtcdURL, options: ClusterOptions) -> None:
        self.url = url
        self.name = url.name(url.config_key)
        self.local = options.local  # the host's own settings, the document may not set them
        self.cache = ConfigCache(options.cache_dir, url, proxy_uid(self.local))
        self._etcd = Etcd(url, options.security)  # the start-up read, then the watch thread's
        security = options.security
        self.membership = Membership(url, options.resolved_id(), options.lease_ttl, security)
        self._latest: Document | None = None  # newest document offered to the server
        self._served: Document | None = None
        self._seen = 0  # revision of the newest document seen, applied or not
        self._next = 0  # revision the next watch starts at (0: read first)
        self._up = False
        self._reload: Reload | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fastproxy-etcd", daemon=True)

    # -- what the server asks for ---------------------------------------------

    def load(self) -> Config:
        if self._latest is None:
            return self._first()
        return self._parse(self._latest.value, self.name)

    def _parse(self, value: bytes, name: str) -> Config:
        return parse_fleet_config(value, name, self.local)

    def start(self, reload: Reload, describe: Describe) -> None:
        self._reload = reload
        if self._served is not None:
            self.cache.write(self._served)
            self.membership.update(config_revision=self._served.revision, applied_at=now_iso())
        self.membership.start(describe)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.membership.stop()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def gauges(self) -> dict[str, float]:
        served = self._served.revision if self._served is not None else 0
        return {"config_revision": served, "config_source_up": 1 if self._up else 0}

    # -- start-up ------------------------------------------------------------

    def _first(self) -> Config:
        """etcd's config; while etcd cannot be reached or holds none, the cached one,
        or (no cache) wait for it, saying so at every attempt."""
        self.cache.prepare()
        cached = self.cache.read()
        if cached is not None:
            try:  # a cache written before a change of host-local settings, say
                self._parse(cached.value, self.cache.path)
            except ConfigError as exc:
                log.warning("ignoring the config cache %s: %s", self.cache.path, exc)
                cached = None
        attempt = 0
        while True:
            try:
                doc, revision = self._etcd.read(self.url.config_key)
                self._up = True
            except EtcdError as exc:
                doc, reason = None, str(exc)
            else:
                reason = f"no config at {self.name} yet"
            if doc is not None:
                self._next = revision + 1
                return self._first_document(doc, cached)
            if cached is not None:
                log.warning(
                    "%s: starting on the cached config of revision %d from %s",
                    reason,
                    cached.revision,
                    self.cache.path,
                )
                return self._serve(cached, seen=cached.revision)
            wait = backoff(attempt)
            attempt += 1
            log.warning("waiting for etcd: %s; retry %d in %.1fs", reason, attempt, wait)
            time.sleep(wait)

    def _first_document(self, doc: Document, cached: Document | None) -> Config:
        try:
            config = self._parse(doc.value, self.name)
        except ConfigError as exc:
            if cached is None:
                raise
            log.error(
                "revision %d rejected, starting on the cached config of revision %d: %s",
                doc.revision,
                cached.revision,
                exc,
            )
            self.membership.update(rejected_revision=doc.revision, rejected_error=str(exc))
            return self._serve(cached, seen=doc.revision)
        self._latest = self._served = doc
        self._seen = doc.revision
        return config

    def _serve(self, doc: Document, seen: int) -> Config:
        self._latest = self._served = doc
        self._seen = seen
        return self._parse(doc.value, f"{self.cache.path} (revision {doc.revision})")

    # -- the watch thread ----------------------------------------------------

    def _watch(self) -> None:
        """Never ends before stop(): every failure is logged, backed off, retried."""
        attempt = 0
        while not self._stop.is_set():
            try:
                failpoint("etcd.watch")
                if self._next == 0:
                    self._catch_up()
                event = self._etcd.watch_once(self.url.config_key, self._next, WATCH_CYCLE)
                if event is None:
                    self._next = 0  # quiet for a cycle: read, which also checks etcd
                else:
                    self._event(event)
                attempt = 0
                continue
            except EtcdError as exc:
                reason = str(exc)
                if self._up:
                    log.warning("etcd: lost (%s); serving the running config", exc)
                self._up = False
            except Exception as exc:
                log.error("etcd watch: unexpected error: %s: %s", type(exc).__name__, exc)
                reason = repr(exc)
            self._next = 0
            wait = backoff(attempt)
            attempt += 1
            log.warning("etcd: %s; retry %d in %.1fs", reason, attempt, wait)
            self._stop.wait(wait)

    def _catch_up(self) -> None:
        # the revision first: a quiet cycle does not fetch (a huge) document again
        doc, revision = self._etcd.read(self.url.config_key, keys_only=True)
        if not self._up:
            log.info("etcd: connected to %s", self.url.hosts)
            self._up = True
        if doc is not None and doc.revision != self._seen:
            doc, revision = self._etcd.read(self.url.config_key)
        self._next = revision + 1
        if doc is not None and doc.revision != self._seen:
            self._offer(doc)

    def _event(self, event: dict[str, Any]) -> None:
        kv = event["kv"]
        revision = int(kv["mod_revision"])
        self._next = revision + 1
        if event.get("type") == "DELETE":
            log.warning("etcd: %s was deleted; the running config stays", self.name)
            self._seen = revision
            return
        self._offer(Document(kv.get("value", b""), revision))

    def _offer(self, doc: Document) -> None:
        """Hand a new document to the server's reload; record what became of it."""
        assert self._reload is not None
        self._latest = doc
        self._seen = doc.revision
        try:
            self._reload(f"etcd revision {doc.revision}")
        except ReloadError as exc:  # logged and counted by the server
            self.membership.update(rejected_revision=doc.revision, rejected_error=str(exc))
            return
        self._served = doc
        self.cache.write(doc)
        self.membership.update(
            config_revision=doc.revision,
            applied_at=now_iso(),
            rejected_revision=None,
            rejected_error=None,
        )
