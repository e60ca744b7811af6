"""etcd as the home of a fleet's config (SPEC sections 8 and 12): the `etcd://` and
`etcds://` URLs, and the few operations the cluster mode needs, through etcd3gw (etcd's
v3 JSON gateway), reached as options.Security says (TLS, client certificate, user and
password).

Every failure to reach etcd becomes an EtcdError with a one-line reason. With several
endpoints, a call that cannot reach one goes on to the next."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..config import ConfigError, parse_host_port
from .options import SCHEME, TLS_SCHEME, Security, is_etcd_url

TIMEOUT = 5.0  # seconds for one request (a watch waits longer, see watch_once)
CONNECT_TIMEOUT = 2.0  # an unreachable endpoint must not hold a thread for minutes

T = TypeVar("T")


class EtcdError(Exception):
    """etcd could not be reached or answered with an error; one line."""


class EtcdUnreachable(EtcdError):
    """No endpoint answered (as opposed to etcd answering with an error)."""


class RevisionMismatch(EtcdError):
    """A compare-and-swap found the key at another revision."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"the config is at revision {actual}, not {expected}: nothing written")
        self.actual = actual


@dataclass(frozen=True)
class EtcdURL:
    """etcd[s]://HOST:PORT[,HOST:PORT...]/PREFIX"""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str  # "/fleet/prod": keys are PREFIX/config and PREFIX/instances/ID
    tls: bool = False  # etcds://

    @classmethod
    def parse(cls, text: str) -> EtcdURL:
        if not is_etcd_url(text):
            raise ConfigError(
                f"{text}: not an etcd URL (etcd[s]://HOST:PORT[,HOST:PORT...]/PREFIX)"
            )
        tls = text.startswith(TLS_SCHEME)
        scheme = TLS_SCHEME if tls else SCHEME
        hosts, slash, prefix = text[len(scheme) :].partition("/")
        prefix = prefix.strip("/")
        if not slash or not prefix:
            raise ConfigError(f"{text}: the etcd URL needs a key prefix (etcd://HOST:PORT/PREFIX)")
        endpoints = []
        for item in hosts.split(","):
            try:
                endpoints.append(parse_host_port(item))
            except ConfigError as exc:
                raise ConfigError(f"{text}: etcd endpoint {exc}") from None
        return cls(tuple(endpoints), "/" + prefix, tls)

    @property
    def scheme(self) -> str:
        return TLS_SCHEME if self.tls else SCHEME

    @property
    def hosts(self) -> str:
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.endpoints)

    @property
    def config_key(self) -> str:
        return f"{self.prefix}/config"

    @property
    def instances_prefix(self) -> str:
        return f"{self.prefix}/instances/"

    def __str__(self) -> str:
        return f"{self.scheme}{self.hosts}{self.prefix}"

    def name(self, key: str) -> str:
        """How messages name a key: etcd://HOST:PORT/PREFIX/config"""
        return f"{self.scheme}{self.hosts}{key}"


@dataclass(frozen=True)
class Document:
    """A value read from etcd and the revision at which it was last modified."""

    value: bytes
    revision: int


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _session(security: Security) -> Any:
    """A requests session whose requests without a timeout (etcd3gw's watch) still
    give up connecting after CONNECT_TIMEOUT; reading a watch stream may wait. etcd3gw
    takes the CA and client certificate only for a session it makes itself, so ours
    carries them (and the auth token, a header on every request, the watch's too)."""
    import requests

    class Session(requests.Session):
        def request(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = (CONNECT_TIMEOUT, None)
            return super().request(*args, **kwargs)

    session = Session()
    # Not the environment's proxy or CA bundle: requests lets REQUESTS_CA_BUNDLE override
    # session.verify, and our --etcd-cacert must be the CA that is checked.
    session.trust_env = False
    if security.cacert:
        session.verify = security.cacert
    if security.cert and security.key:
        session.cert = (security.cert, security.key)
    return session


NOT_INSTALLED = "etcd support is not installed: pip install 'fastproxy[etcd]'"


def require_client() -> None:
    """ConfigError with one line when the `etcd` extra (etcd3gw) is not installed."""
    if importlib.util.find_spec("etcd3gw") is None:
        raise ConfigError(NOT_INSTALLED)


class Etcd:
    """One client per thread that uses it (requests sessions are not shared)."""

    def __init__(
        self, url: EtcdURL, security: Security | None = None, timeout: float = TIMEOUT
    ) -> None:
        require_client()
        import etcd3gw

        self.url = url
        self.security = security or Security()
        self.security.check(url)
        self._password = self.security.password() if self.security.user else None
        protocol = "https" if url.tls else "http"
        self._clients = [
            etcd3gw.client(
                host=h,
                port=p,
                protocol=protocol,
                timeout=timeout,
                session=_session(self.security),
            )  # fmt: skip
            for h, p in url.endpoints
        ]
        self._current = 0  # the endpoint that answered last

    def _authenticate(self, client: Any) -> None:
        """etcd's user/password login (etcd3gw has none): the token it returns goes
        in the Authorization header of every later request of this client."""
        client.session.headers.pop("Authorization", None)
        answer = self._post(
            client, "/auth/authenticate", {"name": self.security.user, "password": self._password}
        )
        client.session.headers["Authorization"] = str(answer["token"])

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        import requests
        from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception

        unreachable = (ConnectionFailedError, ConnectionTimeoutError, requests.RequestException)
        reasons = []
        for step in range(len(self._clients)):
            index = (self._current + step) % len(self._clients)
            client = self._clients[index]
            try:
                if self._password is not None and "Authorization" not in client.session.headers:
                    self._authenticate(client)
                try:
                    result = fn(client)
                except Etcd3Exception as exc:
                    if self._password is None or "auth token" not in _reason(exc):
                        raise
                    self._authenticate(client)  # the token expired: log in again, once
                    result = fn(client)
            except (*unreachable, OSError) as exc:
                reasons.append(_reason(exc))
                continue
            except Etcd3Exception as exc:
                raise EtcdError(f"{what}: etcd refused: {_reason(exc)}") from None
            except (ValueError, KeyError, TypeError) as exc:  # a malformed answer
                raise EtcdError(f"{what}: unexpected answer from etcd ({exc!r})") from None
            self._current = index
            return result
        raise EtcdUnreachable(
            f"{what}: etcd unreachable at {self.url.hosts} ({'; '.join(reasons)})"
        )

    def _post(self, client: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = client.post(client.get_url(path), json=body)
        return result

    # -- keys ----------------------------------------------------------------

    def read(self, key: str, keys_only: bool = False) -> tuple[Document | None, int]:
        """The key's value (None if absent) and the store's revision at the read.
        keys_only: only the key's revision (the value is b"")."""

        def call(client: Any) -> tuple[Document | None, int]:
            answer = self._post(client, "/kv/range", {"key": _b64(key), "keys_only": keys_only})
            revision = int(answer["header"]["revision"])
            for kv in answer.get("kvs", []):
                return Document(_unb64(kv.get("value", "")), int(kv["mod_revision"])), revision
            return None, revision

        return self._call(f"read {key}", call)

    def put_if(self, key: str, value: bytes, revision: int | None) -> int:
        """Write the key (only if it was last modified at `revision`, 0: absent);
        returns the new revision. RevisionMismatch if someone wrote it meanwhile."""

        def call(client: Any) -> dict[str, Any]:
            compare = []
            if revision is not None:
                compare.append(
                    {"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": revision}
                )
            txn = {
                "compare": compare,
                "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
                "failure": [{"request_range": {"key": _b64(key)}}],
            }
            result: dict[str, Any] = client.transaction(txn)
            return result

        answer = self._call(f"write {key}", call)
        if not answer.get("succeeded"):
            kvs = answer["responses"][0]["response_range"].get("kvs", [])
            actual = int(kvs[0]["mod_revision"]) if kvs else 0
            raise RevisionMismatch(revision or 0, actual)
        return int(answer["header"]["revision"])

    def read_prefix(self, prefix: str) -> list[tuple[str, bytes]]:
        def call(client: Any) -> list[tuple[str, bytes]]:
            items = client.get_prefix(prefix)
            return [(meta["key"].decode(), value) for value, meta in items]

        return self._call(f"read {prefix}", call)

    def watch_once(self, key: str, start_revision: int, timeout: float) -> dict[str, Any] | None:
        """The first change of `key` at or after `start_revision`, or None when there
        was none within `timeout`. etcd replays changes it still has, so a watch that
        starts where the last one ended misses nothing."""
        from etcd3gw.exceptions import WatchTimedOut

        def call(client: Any) -> dict[str, Any] | None:
            try:
                event: dict[str, Any] = client.watch_once(
                    key, timeout=timeout, start_revision=start_revision
                )
            except WatchTimedOut:
                return None
            return event

        return self._call(f"watch {key}", call)

    # -- leases --------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        return self._call("grant a lease", lambda c: int(c.lease(ttl).id))

    def keepalive(self, lease: int) -> int:
        """The lease's renewed TTL; 0 or less: it has expired."""
        from etcd3gw.lease import Lease

        return self._call("keep the lease alive", lambda c: Lease(lease, c).refresh())

    def revoke(self, lease: int) -> None:
        from etcd3gw.lease import Lease

        self._call("revoke the lease", lambda c: Lease(lease, c).revoke())

    def put_with_lease(self, key: str, value: bytes, lease: int) -> None:
        from etcd3gw.lease import Lease

        self._call(f"write {key}", lambda c: c.put(key, value, lease=Lease(lease, c)))


def _reason(exc: BaseException) -> str:
    """The gist of a failed request, on one line."""
    detail = getattr(exc, "detail_text", None)
    if detail:
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("error", detail)
    text = str(detail or exc or type(exc).__name__)
    # requests nests the socket or TLS error deep inside its message: keep the end of it
    if "SSLError" in text:
        found = re.search(r"\[SSL[^\]]*\] ([^(')\"]*)", text) or re.search(
            r"SSL\w*Error\(\d+, '([^'(]*)", text
        )
        gist = " ".join(found.group(1).split()) if found else "handshake failed"
        return f"TLS: {_TLS_HINTS.get(gist, gist)}"
    if "Errno" in text:
        text = text[text.rfind("[Errno") :].rstrip("')\"")
    return " ".join(text.split())[:200]


# What the TLS errors most often mean, in the flags' words
_TLS_HINTS = {
    "certificate verify failed: unable to get local issuer certificate": (
        "etcd's certificate is not signed by a CA we trust (see --etcd-cacert)"
    ),
    "tlsv13 alert certificate required": "etcd wants a client certificate (--etcd-cert/--etcd-key)",
    "EOF occurred in violation of protocol": (
        "etcd closed the connection during the handshake (does it take our --etcd-cert?)"
    ),
}
