"""The admin endpoint (SPEC section 4): health, status, metrics, reload and
per-target control over plain HTTP, on loopback by default. Anything it does not
know gets a 4xx; nothing a client sends can stop it serving."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("fastproxy")

TARGET_ACTIONS = ("drain", "disable", "enable")


class Controlled(Protocol):
    """What the endpoint needs from the server."""

    registry: CollectorRegistry

    def status(self) -> dict[str, Any]: ...

    def reload(self, reason: str) -> None: ...

    def set_target(self, app: str, target: str, action: str) -> dict[str, Any]: ...


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    timeout = 10  # a stalled client cannot hold a thread for long
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("admin: " + format, *args)

    def _send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, value: Any) -> None:
        self._send(code, json.dumps(value, indent=1).encode() + b"\n", "application/json")

    def _error(self, code: int, message: str) -> None:
        self._json(code, {"error": message})

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Protocol errors (bad request line, unsupported method) as 4xx JSON;
        # an unknown method is "405", never the default 501.
        if code == HTTPStatus.NOT_IMPLEMENTED:
            code = HTTPStatus.METHOD_NOT_ALLOWED
        elif code >= 500:  # e.g. 505 for "HTTP/9.9": the client's fault all the same
            code = HTTPStatus.BAD_REQUEST
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # else http.server omits the status line
        self.close_connection = True
        with contextlib.suppress(OSError):
            self._error(code, message or HTTPStatus(code).phrase)

    def do_GET(self) -> None:
        control = self.server.control
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/status":
            self._json(200, control.status())
        elif path == "/metrics":
            self._send(200, generate_latest(control.registry), CONTENT_TYPE_LATEST)
        else:
            self._error(404, f"no such endpoint: GET {path}")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        control = self.server.control
        length = self.headers.get("Content-Length", "0")
        if length.isdigit() and 0 < int(length) <= 65536:
            self.rfile.read(int(length))  # bodies carry nothing; drain them
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if parts == ["reload"]:
            try:
                control.reload("admin endpoint")
            except Exception as exc:  # the reason goes back to the operator
                self._json(400, {"result": "failure", "error": str(exc)})
            else:
                self._json(200, {"result": "success"})
        elif len(parts) == 4 and parts[0] == "targets":
            app, target, action = (unquote(p) for p in parts[1:])
            if action not in TARGET_ACTIONS:
                self._error(404, f"unknown action {action!r}: use drain, disable or enable")
                return
            try:
                self._json(200, control.set_target(app, target, action))
            except KeyError as exc:
                self._error(404, str(exc.args[0]))
        else:
            self._error(404, f"no such endpoint: POST {self.path}")

    def _not_allowed(self) -> None:
        self._error(405, f"method {self.command} not allowed")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    control: Controlled


class AdminServer:
    def __init__(
        self, control: Controlled, host: str, port: int, sock: socket.socket | None = None
    ) -> None:
        """Listen on host:port, or serve on `sock`, a listening socket handed over by
        the process we took over from."""
        _HTTPServer.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if sock is None:
            self.httpd = _HTTPServer((host, port), _Handler)
        else:
            self.httpd = _HTTPServer((host, port), _Handler, bind_and_activate=False)
            self.httpd.socket.close()
            self.httpd.socket = sock
            self.httpd.server_address = sock.getsockname()[:2]
        self.httpd.control = control
        self.address: tuple[str, int] = (host, self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="fastproxy-admin", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    @property
    def socket(self) -> socket.socket:
        return self.httpd.socket

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
