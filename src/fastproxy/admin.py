"""The admin endpoint (SPEC sections 4 and 7): health, status, metrics, reload and
per-target control over plain HTTP, on loopback by default. Reads are open; every
POST needs the admin token and must not come from a web page of another origin.
Anything it does not know gets a 4xx; nothing a client sends can stop it serving
(boundedhttp.py keeps the cost of any client bounded)."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

from .boundedhttp import BoundedHTTPServer, Deferred, Request, Response

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("fastproxy")

TARGET_ACTIONS = ("drain", "disable", "enable")


class Controlled(Protocol):
    """What the endpoint needs from the server."""

    @property
    def registry(self) -> CollectorRegistry: ...

    def healthz(self) -> tuple[int, str]: ...

    def status(self) -> dict[str, Any]: ...

    def reload(self, reason: str) -> list[str]: ...

    def set_target(self, app: str, target: str, action: str) -> dict[str, Any]: ...


def _json(status: int, value: Any) -> Response:
    return Response(status, json.dumps(value, indent=1).encode() + b"\n", "application/json")


def _error(status: int, message: str, *headers: tuple[str, str]) -> Response:
    return Response(
        status,
        json.dumps({"error": message}, indent=1).encode() + b"\n",
        "application/json",
        headers,
    )


def _metrics(registry: CollectorRegistry) -> Response:
    # Imported at the first scrape, not at start-up (see Server.registry).
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)


def _origin(host: str, port: int) -> bytes:
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}".encode()


class AdminServer:
    def __init__(
        self,
        control: Controlled,
        host: str,
        port: int,
        sock: socket.socket | None = None,
        *,
        token: str,
    ) -> None:
        """Listen on host:port, or serve on `sock`, a listening socket handed over by
        the process we took over from. `token` authorizes POSTs."""
        self.control = control
        self._token = token.encode()
        if sock is None:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
            except BaseException:
                sock.close()
                raise
        self.address: tuple[str, int] = (host, sock.getsockname()[1])
        # Reads and operator actions each on a worker of their own: a slow reload
        # does not hold up scrapes, and neither holds up /healthz (on the loop).
        self.http = BoundedHTTPServer(
            self._route, sock, lanes=("read", "write"), name="fastproxy-admin"
        )

    def start(self) -> None:
        bound = self.socket.getsockname()[0].split("%")[0]
        if not ipaddress.ip_address(bound).is_loopback:
            log.warning(
                "admin endpoint on %s:%d is not loopback: /healthz, /status and /metrics"
                " are open to the network (POSTs need the token)",
                *self.address,
            )
        self.http.start()

    @property
    def socket(self) -> socket.socket:
        return self.http.socket

    def stop(self) -> None:
        self.http.stop()

    # -- requests ----------------------------------------------------------------

    def _route(self, request: Request) -> Response | Deferred:
        control = self.control
        path = request.path
        if request.method in ("GET", "HEAD"):
            if path == "/healthz":
                status, text = control.healthz()
                return Response(status, text.encode() + b"\n")
            if path == "/status":
                return Deferred("read", lambda: _json(200, control.status()))
            if path == "/metrics":
                return Deferred("read", lambda: _metrics(control.registry))
            return _error(404, f"no such endpoint: {request.method} {path}")
        if request.method != "POST":
            return _error(405, f"method {request.method} not allowed")
        refused = self._refuse(request)
        if refused is not None:
            return refused
        parts = path.strip("/").split("/")
        if parts == ["reload"]:
            return Deferred("write", self._reload)
        if len(parts) == 4 and parts[0] == "targets":
            app, target, action = (unquote(p) for p in parts[1:])
            if action not in TARGET_ACTIONS:
                return _error(404, f"unknown action {action!r}: use drain, disable or enable")
            return Deferred("write", lambda: self._set_target(app, target, action))
        return _error(404, f"no such endpoint: POST {path}")

    def _refuse(self, request: Request) -> Response | None:
        """403 for a web page of another origin (a browser sends Origin with its
        cross-site POSTs), 401 without the right token; None to go ahead."""
        origin = request.header(b"origin")
        if origin is not None and origin not in self._own_origins(request):
            log.debug("admin: POST %s from origin %r refused", request.path, origin)
            return _error(403, "cross-origin requests are refused")
        scheme, _, given = (request.header(b"authorization") or b"").partition(b" ")
        # compare_digest: the time taken says nothing about how much of the token matched
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
            log.debug("admin: POST %s without a valid token refused", request.path)
            return _error(
                401,
                "POST needs the header 'Authorization: Bearer TOKEN' with the admin token",
                ("WWW-Authenticate", 'Bearer realm="fastproxy admin"'),
            )
        return None

    def _own_origins(self, request: Request) -> tuple[bytes, ...]:
        """The endpoint's own origin, as configured and as the client reached it
        (the configured host may be a name or a wildcard)."""
        port = self.address[1]
        own = (_origin(self.address[0], port), _origin(request.local[0], port))
        return own + tuple(o.removesuffix(b":80") for o in own if port == 80)

    def _reload(self) -> Response:
        try:
            pending = self.control.reload("admin endpoint")
        except Exception as exc:  # the reason goes back to the operator
            return _json(400, {"result": "failure", "error": str(exc)})
        # Applied, except settings only a restart can change: the CLI exits 3 naming them.
        return _json(200, {"result": "success", "restart_required": pending})

    def _set_target(self, app: str, target: str, action: str) -> Response:
        try:
            return _json(200, self.control.set_target(app, target, action))
        except KeyError as exc:
            return _error(404, str(exc.args[0]))
