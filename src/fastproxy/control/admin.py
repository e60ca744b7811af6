"""The admin endpoint (SPEC sections 4, 7 and 12): health, status, metrics, reload
and per-target control over plain HTTP, on loopback by default and on a unix socket
(adminsocket.py) for the CLI. Reads are open; every POST needs the admin token and
must not come from a web page of another origin. Over TCP, every request must name
the endpoint in its Host header (an IP address, `localhost` or one of `AdminHosts`),
so that a web page that rebinds its own name to 127.0.0.1 reads nothing. Anything it
does not know gets a 4xx; nothing a client sends can stop it serving, nor keep
/healthz and the operator's requests from being served (boundedhttp.py)."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

from . import adminsocket
from .boundedhttp import BoundedHTTPServer, Deferred, Request, Response

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from ..config import Config

log = logging.getLogger("fastproxy")

TARGET_ACTIONS = ("drain", "disable", "enable")


class Controlled(Protocol):
    """What the endpoint needs from the server."""

    @property
    def registry(self) -> CollectorRegistry: ...

    @property
    def config(self) -> Config: ...

    def healthz(self) -> tuple[int, str]: ...

    def status(self) -> dict[str, Any]: ...

    def reload(self, reason: str) -> list[str]: ...

    def set_target(
        self, app: str, target: str, action: str, close: bool = False
    ) -> dict[str, Any]: ...

    def set_weight(self, app: str, target: str, weight: int) -> dict[str, Any]: ...


# GET /: what the endpoint serves, for whoever finds the port.
INDEX = b"""fastproxy admin endpoint
GET  /healthz                               200 ok while serving; 503 and why otherwise
GET  /status                                apps, ports, targets, counters (JSON)
GET  /metrics                               Prometheus
POST /reload                                reload the config (token)
POST /targets/APP/HOST:PORT/drain|disable|enable   one target at run time (token);
     disable?close=1 also closes its open connections
POST /targets/APP/HOST:PORT/weight/N          its weight (1..1000) at run time (token)
POSTs need "Authorization: Bearer TOKEN" (AdminTokenFile); the CLI: fastproxy --help
"""


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
    from ..observe.exposition import CONTENT_TYPE, render

    return Response(200, render(registry), CONTENT_TYPE)


def _origin(host: str, port: int) -> bytes:
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}".encode()


def host_allowed(value: bytes | None, names: tuple[str, ...]) -> bool:
    """Whether a Host header names this endpoint: an IP address, `localhost`, or one
    of `names` (lower case), with or without a port. No Host at all (HTTP/1.0) is
    fine: every browser sends one."""
    if value is None:
        return True
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return False
    if text.startswith("["):  # [v6] or [v6]:port
        literal, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return False
        try:
            return ipaddress.ip_address(literal).version == 6
        except ValueError:
            return False
    name, colon, port = text.partition(":")
    if colon and not port.isdigit():
        return False
    name = name.removesuffix(".")
    if name == "localhost" or name in names:
        return True
    try:
        return ipaddress.ip_address(name).version == 4
    except ValueError:
        return False


class AdminServer:
    def __init__(
        self,
        control: Controlled,
        host: str,
        port: int,
        sock: socket.socket | None = None,
        *,
        token: str,
        unix_path: str | None = None,
        unix_sock: socket.socket | None = None,
        owner: int | None = None,
    ) -> None:
        """Listen on host:port, or serve on `sock`, a listening socket handed over by
        the process we took over from; the same on the unix socket `unix_path` (none
        when None), `unix_sock` if handed over, else bound for `owner` (a uid, the
        user root is about to drop to). `token` authorizes POSTs."""
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
        if unix_path is not None and unix_sock is None:
            try:
                unix_sock = adminsocket.bind(unix_path, owner)
            except OSError as exc:  # served without it, as without the control socket
                log.warning(
                    "no admin socket at %s (the CLI then needs --admin HOST:PORT): %s",
                    unix_path,
                    exc.strerror or exc,
                )
                unix_path = None
        self.unix_path = unix_path
        self.unix_socket = unix_sock
        self._started = False
        # Reads and operator actions each on a worker of their own: a slow reload
        # does not hold up scrapes, and neither holds up /healthz (on the loop).
        sockets = [sock] if unix_sock is None else [sock, unix_sock]
        self.http = BoundedHTTPServer(
            self._route,
            sockets,
            lanes=("read", "write"),
            name="fastproxy-admin",
            privileged=self._privileged,
        )

    def start(self) -> None:
        bound = self.socket.getsockname()[0].split("%")[0]
        if not ipaddress.ip_address(bound).is_loopback:
            log.warning(
                "admin endpoint on %s:%d is not loopback: /healthz, /status and /metrics"
                " are open to the network (POSTs need the token)",
                *self.address,
            )
        self._started = True
        self.http.start()
        if self.unix_path is not None:
            log.info("admin endpoint also on unix socket %s", self.unix_path)

    @property
    def socket(self) -> socket.socket:
        return self.http.sockets[0]

    def stop(self, handed_over: bool = False) -> None:
        """Stop serving; `handed_over`: a successor serves our sockets now. The unix
        socket's path goes only with a proxy that served it and hands it to no one."""
        self.http.stop()
        if self.unix_path and self.unix_socket and self._started and not handed_over:
            adminsocket.remove(self.unix_path, self.unix_socket)

    # -- requests ----------------------------------------------------------------

    def _route(self, request: Request) -> Response | Deferred:
        control = self.control
        path = request.path
        # Over the unix socket no browser is involved: no Host to check.
        if request.local is not None and not host_allowed(
            request.header(b"host"), control.config.admin_hosts
        ):
            log.debug(
                "admin: %s %s for host %r refused", request.method, path, request.header(b"host")
            )
            return _error(
                403, "unknown Host: the endpoint is an IP address, localhost or AdminHosts"
            )
        if request.method in ("GET", "HEAD"):
            if path == "/healthz":
                status, text = control.healthz()
                return Response(status, text.encode() + b"\n")
            if path == "/status":
                return Deferred("read", lambda: _json(200, control.status()))
            if path == "/metrics":
                return Deferred("read", lambda: _metrics(control.registry))
            if path == "/":
                return Response(200, INDEX)
            return _error(404, f"no such endpoint: {request.method} {path} (GET / lists them)")
        if request.method != "POST":
            return _error(405, f"method {request.method} not allowed")
        refused = self._refuse(request)
        if refused is not None:
            return refused
        parts = path.strip("/").split("/")
        if parts == ["reload"]:
            return Deferred("write", self._reload)
        if len(parts) == 5 and parts[0] == "targets" and parts[3] == "weight":
            app, target = unquote(parts[1]), unquote(parts[2])
            if not parts[4].isdigit() or not 1 <= int(parts[4]) <= 1000:
                return _error(400, f"weight must be an integer 1..1000, got {parts[4][:20]!r}")
            weight = int(parts[4])
            return Deferred("write", lambda: self._set_weight(app, target, weight))
        if len(parts) == 4 and parts[0] == "targets":
            app, target, action = (unquote(p) for p in parts[1:])
            if action not in TARGET_ACTIONS:
                return _error(404, f"unknown action {action!r}: use drain, disable or enable")
            query = request.target.partition("?")[2]
            if query not in ("", "close=1") or (query and action != "disable"):
                return _error(400, f"unknown query {query!r}: only disable takes ?close=1")
            close = query == "close=1"
            return Deferred("write", lambda: self._set_target(app, target, action, close))
        return _error(404, f"no such endpoint: POST {path}")

    def _privileged(self, request: Request) -> bool:
        """What is served even when every ordinary slot is taken (boundedhttp.py):
        /healthz, anything over the unix socket, and requests with the token."""
        if request.local is None:
            return True
        if request.method in ("GET", "HEAD") and request.path == "/healthz":
            return True
        return self._authorized(request)

    def _authorized(self, request: Request) -> bool:
        scheme, _, given = (request.header(b"authorization") or b"").partition(b" ")
        # compare_digest: the time taken says nothing about how much of the token matched
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token)

    def _refuse(self, request: Request) -> Response | None:
        """403 for a web page of another origin (a browser sends Origin with its
        cross-site POSTs), 401 without the right token; None to go ahead."""
        origin = request.header(b"origin")
        if origin is not None and origin not in self._own_origins(request):
            log.debug("admin: POST %s from origin %r refused", request.path, origin)
            return _error(403, "cross-origin requests are refused")
        if not self._authorized(request):
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
        local = request.local or self.address
        own = (_origin(self.address[0], port), _origin(local[0], port))
        return own + tuple(o.removesuffix(b":80") for o in own if port == 80)

    def _reload(self) -> Response:
        try:
            pending = self.control.reload("admin endpoint")
        except Exception as exc:  # the reason goes back to the operator
            return _json(400, {"result": "failure", "error": str(exc)})
        # Applied, except settings only a restart can change: the CLI exits 3 naming them.
        return _json(200, {"result": "success", "restart_required": pending})

    def _set_weight(self, app: str, target: str, weight: int) -> Response:
        try:
            return _json(200, self.control.set_weight(app, target, weight))
        except KeyError as exc:
            return _error(404, str(exc.args[0]))

    def _set_target(self, app: str, target: str, action: str, close: bool) -> Response:
        try:
            return _json(200, self.control.set_target(app, target, action, close))
        except KeyError as exc:
            return _error(404, str(exc.args[0]))
