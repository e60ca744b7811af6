"""The orchestrator: builds the relay from a Config, listens, keeps DNS fresh, and
shuts down gracefully. `run()` is what `fastproxy serve` calls."""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import threading
import time
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any

from . import _relay
from .config import Config, load_config
from .listeners import ListenError, open_listener
from .resolver import resolve_all
from .routing import Routes

log = logging.getLogger("fastproxy")

STARTUP_DNS_WAIT = 1.0  # seconds start-up waits for DNS before serving anyway
DNS_REFRESH = 30.0  # re-resolve hostnames this often
DNS_RETRY = 5.0  # ...and unresolved ones this often


@dataclass(frozen=True)
class Options:
    """Command-line overrides of the config's settings; None keeps the config's."""

    steering: str | None = None
    workers: int | None = None
    relay: str | None = None
    pipe_size: int | None = None


def apply_options(config: Config, options: Options) -> Config:
    changes: dict[str, Any] = {
        key: value
        for key, value in (
            ("steering", options.steering),
            ("workers", options.workers),
            ("relay", options.relay),
            ("pipe_size", options.pipe_size),
        )
        if value is not None
    }
    return replace(config, **changes) if changes else config


def raise_fd_limit() -> None:
    """A proxy holds two sockets per connection: take all descriptors allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.workers = config.workers or os.cpu_count() or 1
        self.relay = _relay.Relay(
            workers=self.workers, splice=config.relay == "splice", pipe_size=config.pipe_size
        )
        self.routes = Routes(self.relay)
        self.steering = "ports"
        self.listeners: dict[int, list[socket.socket]] = {}
        self.started_at = time.monotonic()
        self._stopping = threading.Event()
        self._maintenance: threading.Thread | None = None

    # -- start ---------------------------------------------------------------

    def start(self) -> None:
        raise_fd_limit()
        hosts = {t.host for app in self.config.apps for t in app.targets}
        addresses = resolve_all(hosts, STARTUP_DNS_WAIT)
        for host, address in sorted(addresses.items()):
            if address is None:
                log.warning("target host %s does not resolve (yet): its targets are down", host)
        self.routes.apply(self.config, addresses)
        try:
            self._listen_ports(self.routes.port_owner)
        except ListenError:
            self._close_listeners()
            raise
        self.relay.start()
        self._maintenance = threading.Thread(
            target=self._maintain, name="fastproxy-maintenance", daemon=True
        )
        self._maintenance.start()
        ports = len(self.routes.port_owner)
        log.info(
            "serving %d apps on %d ports (steering=%s, relay=%s, workers=%d)",
            len(self.config.apps),
            ports,
            self.steering,
            self.config.relay,
            self.workers,
        )

    def _listen_ports(self, ports: dict[int, str]) -> None:
        for port in sorted(ports):
            if port in self.listeners:
                continue
            socks = []
            try:
                for host in self.config.listen:
                    socks.append(open_listener(host, port))
            except ListenError as exc:
                for sock in socks:
                    sock.close()
                raise ListenError(f'{exc} (app "{ports[port]}")') from None
            for sock in socks:
                self.relay.add_listener(sock.fileno(), port)
            self.listeners[port] = socks

    def _close_listeners(self) -> None:
        for socks in self.listeners.values():
            for sock in socks:
                if sock.fileno() in self.relay.listener_fds:
                    self.relay.remove_listener(sock.fileno())
                sock.close()
        self.listeners.clear()

    # -- background upkeep ---------------------------------------------------

    def _maintain(self) -> None:
        """Re-resolve hostnames: unresolved ones often, resolved ones now and then."""
        last_full = time.monotonic()
        while not self._stopping.wait(DNS_RETRY):
            full = time.monotonic() - last_full >= DNS_REFRESH
            hosts = {
                t.target.host
                for rt in self.routes.apps.values()
                for t in rt.targets
                if full or t.address is None
            }
            if full:
                last_full = time.monotonic()
            if not hosts:
                continue
            fresh = resolve_all(hosts, DNS_RETRY)
            # A lookup failing now keeps the last good address: DNS blips are not
            # target failures (health checks decide those).
            fresh = {h: a for h, a in fresh.items() if a is not None}
            for name in self.routes.update_addresses(fresh):
                log.info("app %s: target addresses updated from DNS", name)

    # -- stop ----------------------------------------------------------------

    def stop_accepting(self) -> None:
        self._stopping.set()
        self._close_listeners()

    def drain(self, timeout: float, abort: threading.Event | None = None) -> bool:
        """Wait for open connections to finish; False if some were still open."""
        deadline = time.monotonic() + timeout
        while self.relay.connections() > 0:
            if time.monotonic() >= deadline or (abort is not None and abort.is_set()):
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        self.stop_accepting()
        self.relay.stop()


def run(
    config_path: str,
    *,
    steering: str | None = None,
    workers: int | None = None,
    relay: str | None = None,
    pipe_size: int | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT, then drain and return the exit status.
    Raises ConfigError or ListenError (one-line messages) before serving."""
    options = Options(steering=steering, workers=workers, relay=relay, pipe_size=pipe_size)
    config = apply_options(load_config(config_path), options)
    server = Server(config)
    stop = threading.Event()
    stop_now = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            stop_now.set()  # a second signal: do not wait for connections
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        while not stop.wait(0.5):
            pass
        log.info("stopping: no new connections; draining for up to %gs", config.drain_timeout)
        server.stop_accepting()
        if not server.drain(config.drain_timeout, stop_now):
            log.info("closing %d connections still open", server.relay.connections())
        server.close()
        log.info("stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
