"""The orchestrator: builds the relay from a Config, listens (one socket per port,
or one steered socket for all), runs health checks and the admin endpoint, keeps
DNS fresh, reloads, and shuts down gracefully. `run()` is what `fastproxy serve`
calls."""

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

from . import __version__, _relay
from .admin import AdminServer
from .config import Config, ConfigError, load_config
from .control import DEFAULT_PATH as DEFAULT_CONTROL_SOCKET
from .control import ControlServer, Handover, Successor
from .health import HealthChecker
from .listeners import ListenError, check_port_free, open_listener
from .metrics import ProxyCollector, make_registry
from .resolver import resolve_all
from .routing import Routes, TargetRuntime
from .watch import FileWatcher

log = logging.getLogger("fastproxy")

STARTUP_DNS_WAIT = 1.0  # seconds start-up and reloads wait for DNS before going on
DNS_REFRESH = 30.0  # re-resolve hostnames this often
DNS_RETRY = 5.0  # ...and unresolved ones (or ones whose target went down) this often
# Settings a running relay cannot change: a reload keeps the old ones (and says so).
RESTART_ONLY = ("listen", "workers", "steering", "relay", "pipe_size", "admin")


@dataclass(frozen=True)
class Options:
    """Command-line overrides of the config's settings; None keeps the config's."""

    steering: str | None = None
    workers: int | None = None
    relay: str | None = None
    pipe_size: int | None = None
    admin: tuple[str, int] | None = None

    def apply(self, config: Config) -> Config:
        changes: dict[str, Any] = {
            key: getattr(self, key)
            for key in ("steering", "workers", "relay", "pipe_size", "admin")
            if getattr(self, key) is not None
        }
        return replace(config, **changes) if changes else config


class ReloadError(Exception):
    """One-line reason a reload was rejected; the running config stays."""


def raise_fd_limit() -> None:
    """A proxy holds two sockets per connection: take all descriptors allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Server:
    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        options: Options | None = None,
        inherited: Handover | None = None,
    ) -> None:
        self.config = config
        self.inherited = inherited  # sockets handed over by the process we replace
        self.config_path = config_path
        self.options = options or Options()
        self.workers = config.workers or os.cpu_count() or 1
        self.relay = _relay.Relay(
            workers=self.workers, splice=config.relay == "splice", pipe_size=config.pipe_size
        )
        self.routes = Routes(self.relay)
        self.steering_mode = "ports"
        self.steering: Any = None  # steering.Steering in bpf mode
        self.listeners: dict[int, list[socket.socket]] = {}  # ports mode
        self.steered: list[socket.socket] = []  # bpf mode
        self.reloads = {"success": 0, "failure": 0}
        self.started_at = time.monotonic()
        self.health = HealthChecker(self.routes, on_down=self._target_down)
        self.registry = make_registry(
            ProxyCollector(
                self.routes, self.reloads, self._steering_counters, lambda: self.health.checks_done
            )
        )
        self.admin: AdminServer | None = None
        self.watcher: FileWatcher | None = None
        # One change of listeners at a time: reloads, a takeover, stopping.
        self.reload_lock = threading.RLock()
        self._stopping = threading.Event()
        self.successor_ready = threading.Event()
        self._dns_now = threading.Event()
        self._maintenance = threading.Thread(
            target=self._maintain, name="fastproxy-dns", daemon=True
        )

    # -- start ---------------------------------------------------------------

    def start(self) -> None:
        raise_fd_limit()
        addresses = self._resolve(self.config)
        self.routes.apply(self.config, addresses)
        try:
            self._start_listening()
            host, port = self.config.admin
            try:
                self.admin = AdminServer(self, host, port, self._inherited_admin())
            except OSError as exc:
                raise ListenError(
                    f"cannot serve the admin endpoint on {host}:{port}: {exc.strerror}"
                ) from None
        except BaseException:
            self._stop_listening()
            raise
        self.relay.start()
        self.admin.start()
        self.health.start()
        self._maintenance.start()
        if self.config_path is not None:
            self.watcher = FileWatcher(self.config_path, lambda: self.try_reload("file changed"))
            self.watcher.start()
        log.info(
            "serving %d apps on %d ports (steering=%s, relay=%s, workers=%d, admin=%s:%d)",
            len(self.config.apps),
            len(self.routes.port_owner),
            self.steering_mode,
            self.config.relay,
            self.workers,
            *self.admin.address,
        )

    def _resolve(self, config: Config) -> dict[str, Any]:
        hosts = {t.host for app in config.apps for t in app.targets}
        addresses = resolve_all(hosts, STARTUP_DNS_WAIT)
        for host, address in sorted(addresses.items()):
            if address is None:
                log.warning("target host %s does not resolve (yet): its targets are down", host)
        return addresses

    def _inherited_admin(self) -> socket.socket | None:
        if self.inherited is None:
            return None
        for desc, sock in self.inherited.take("admin"):
            if [desc["host"], desc["port"]] == list(self.config.admin):
                return sock
            sock.close()  # the admin address changed: bind the new one
        return None

    def _adopt(self) -> None:
        """Serve on the sockets handed over by the process we take over from. The
        upgrade keeps its steering mode: bpf state and listeners go together."""
        assert self.inherited is not None
        steered = [sock for _, sock in self.inherited.take("steered")]
        if self.inherited.steering == "bpf" and steered:
            from .steering import Steering, SteeringUnavailable

            try:
                self.steering = Steering.attach(steered, self.routes.port_owner, takeover=True)
            except SteeringUnavailable as exc:
                raise ListenError(f"takeover of bpf steering failed: {exc}") from None
            for sock in steered:
                self.relay.add_listener(sock.fileno(), 0)
            self.steered = steered
            self.steering_mode = "bpf"
            return
        wanted = self.routes.port_owner
        for desc, sock in self.inherited.take("port"):
            if desc["port"] in wanted:
                self.listeners.setdefault(desc["port"], []).append(sock)
            else:
                sock.close()  # the predecessor still accepts on it until it stops
        for port, socks in self.listeners.items():
            for sock in socks:
                self.relay.add_listener(sock.fileno(), port)
        self._listen_ports(wanted)  # ports new in our config

    def handover(self) -> Handover:
        """Our listening sockets, for a successor (see control.py)."""
        socks: list[tuple[dict[str, Any], socket.socket]] = []
        for port, port_socks in self.listeners.items():
            socks += [({"role": "port", "port": port}, sock) for sock in port_socks]
        socks += [({"role": "steered"}, sock) for sock in self.steered]
        if self.admin is not None:
            host, port = self.admin.address
            socks.append(({"role": "admin", "host": host, "port": port}, self.admin.socket))
        return Handover(self.steering_mode, socks)

    def yield_to_successor(self) -> None:
        """A new process accepts on our sockets now: stop accepting and drain."""
        log.info("takeover: a new process is serving; draining")
        self.stop_accepting(successor=True)
        self.successor_ready.set()

    def _start_listening(self) -> None:
        if self.inherited is not None:
            self._adopt()
            return
        mode = self.config.steering
        if mode in ("auto", "bpf"):
            from . import steering

            reason = steering.probe() or self._bpf_listen_problem()
            if reason is None:
                try:
                    self._attach_steering()
                    return
                except steering.SteeringUnavailable as exc:
                    reason = str(exc)
            if mode == "bpf":
                raise ListenError(f"bpf steering unavailable: {reason}")
            log.info("steering: using ports mode (bpf unavailable: %s)", reason)
        self._listen_ports(self.routes.port_owner)

    def _bpf_listen_problem(self) -> str | None:
        families = [":" in host for host in self.config.listen]
        if len(families) != len(set(families)):
            return "bpf steering serves one Listen address per address family"
        return None

    def _attach_steering(self) -> None:
        """One listening socket per Listen address, on an ephemeral port; the
        sk_lookup program hands it the connections for every configured port."""
        from .steering import Steering

        self._check_ports_free(self.routes.port_owner)
        socks = [open_listener(host, 0) for host in self.config.listen]
        try:
            self.steering = Steering.attach(socks, self.routes.port_owner)
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        for sock in socks:
            self.relay.add_listener(sock.fileno(), 0)
        self.steered = socks
        self.steering_mode = "bpf"

    def _check_ports_free(self, ports: dict[int, str]) -> None:
        for port in sorted(ports):
            for host in self.config.listen:
                try:
                    check_port_free(host, port)
                except ListenError as exc:
                    raise ListenError(f'{exc} (app "{ports[port]}")') from None

    def _listen_ports(self, ports: dict[int, str]) -> None:
        self._accept_on(self._open_ports(ports))

    def _open_ports(self, ports: dict[int, str]) -> dict[int, list[socket.socket]]:
        """Listening sockets for the ports that have none yet; on failure none is
        left open, so a port that cannot be bound leaves everything as it was."""
        opened: dict[int, list[socket.socket]] = {}
        try:
            for port in sorted(ports.keys() - self.listeners.keys()):
                opened[port] = []
                for host in self.config.listen:
                    opened[port].append(open_listener(host, port))
        except ListenError as exc:
            for socks in opened.values():
                for sock in socks:
                    sock.close()
            raise ListenError(f'{exc} (app "{ports[port]}")') from None
        return opened

    def _accept_on(self, opened: dict[int, list[socket.socket]]) -> None:
        for port, socks in opened.items():
            for sock in socks:
                self.relay.add_listener(sock.fileno(), port)
            self.listeners[port] = socks

    def _unlisten_ports(self, ports: set[int]) -> None:
        for port in ports:
            for sock in self.listeners.pop(port, []):
                self.relay.remove_listener(sock.fileno())
                sock.close()

    def _stop_listening(self, successor: bool = False) -> None:
        """Stop accepting. With a successor, our sockets and pinned steering state
        live on in it: close only our copies, and leave the pins in place."""
        self._unlisten_ports(set(self.listeners))
        for sock in self.steered:
            if sock.fileno() in self.relay.listener_fds:
                self.relay.remove_listener(sock.fileno())
            sock.close()
        self.steered = []
        if self.steering is not None:
            if successor:
                self.steering.release()
            else:
                self.steering.close()
            self.steering = None

    def _steering_counters(self) -> dict[str, int] | None:
        return self.steering.counters() if self.steering is not None else None

    # -- reload --------------------------------------------------------------

    def reload(self, reason: str) -> None:
        """Apply the config file again. Invalid: ReloadError, nothing changes.
        Valid: new ports accept at once, removed ports stop, target and policy
        changes apply to new connections; established connections are untouched."""
        if self.config_path is None:
            raise ReloadError("no config file to reload from")
        with self.reload_lock:
            if self._stopping.is_set():
                raise ReloadError("shutting down")
            try:
                new = self._load_for_reload()
                self._apply(new)
            except (ConfigError, ListenError, ReloadError) as exc:
                self.reloads["failure"] += 1
                log.error("reload (%s) rejected, the running config stays: %s", reason, exc)
                raise ReloadError(str(exc)) from None
            self.reloads["success"] += 1
            log.info(
                "reloaded (%s): %d apps on %d ports",
                reason,
                len(new.apps),
                len(self.routes.port_owner),
            )

    def try_reload(self, reason: str) -> bool:
        try:
            self.reload(reason)
        except ReloadError:
            return False
        return True

    def _load_for_reload(self) -> Config:
        assert self.config_path is not None
        new = self.options.apply(load_config(self.config_path))
        kept = {}
        for key in RESTART_ONLY:
            if getattr(new, key) != getattr(self.config, key):
                log.warning("reload: %s changed; it takes effect only after a restart", key)
                kept[key] = getattr(self.config, key)
        return replace(new, **kept) if kept else new

    def _apply(self, new: Config) -> None:
        """Ports that go away stop first, routes change, then new ports open: no
        moment where a port accepts a client and has no app for it."""
        ports = new.port_owner()
        addresses = self._resolve(new)
        if self.steering is not None:
            added = ports.keys() - self.routes.port_owner.keys()
            self._check_ports_free({port: ports[port] for port in added})
            self.steering.set_ports(ports.keys() & self.routes.port_owner.keys())
            self.routes.apply(new, addresses)
            self.steering.set_ports(ports)
        else:
            opened = self._open_ports(ports)  # may fail: then nothing has changed yet
            self._unlisten_ports(self.listeners.keys() - ports.keys())
            self.routes.apply(new, addresses)
            self._accept_on(opened)
        self.config = new

    # -- operator actions and status -----------------------------------------

    def set_target(self, app: str, target: str, action: str) -> dict[str, Any]:
        runtime = self.routes.set_admin(app, target, action)
        log.info("app %s: target %s: %s (operator)", app, target, action)
        return {"app": app, "target": target, "state": runtime.state}

    def status(self) -> dict[str, Any]:
        apps = []
        with self.routes.lock:
            runtimes = list(self.routes.apps.values())
        for runtime in runtimes:
            stats = self.routes.stats(runtime.slot)
            targets = []
            for t in runtime.targets:
                tstats = self.routes.stats(t.slot)
                targets.append(
                    {
                        "address": t.target.address,
                        "state": t.state,
                        "resolved": t.address[1] if t.address else None,
                        "active": tstats["active"],
                        "connections": tstats["connections"],
                        "connect_failures": tstats["connect_failures"],
                        "bytes_in": tstats["bytes_in"],
                        "bytes_out": tstats["bytes_out"],
                    }
                )
            apps.append(
                {
                    "name": runtime.app.name,
                    "ports": sorted(runtime.app.ports),
                    "balance": runtime.app.balance,
                    "active": stats["active"],
                    "connections": stats["connections"],
                    "bytes_in": stats["bytes_in"],
                    "bytes_out": stats["bytes_out"],
                    "no_target": stats["no_target"],
                    "rejected": stats["rejected"],
                    "local_errors": stats["local_errors"],
                    "targets": targets,
                }
            )
        return {
            "version": __version__,
            "pid": os.getpid(),
            "steering": self.steering_mode,
            "relay": self.config.relay,
            "workers": self.workers,
            "uptime": round(time.monotonic() - self.started_at, 3),
            "connections": self.relay.connections(),
            "reloads": dict(self.reloads),
            "apps": apps,
        }

    # -- background upkeep ---------------------------------------------------

    def _target_down(self, target: TargetRuntime) -> None:
        self._dns_now.set()  # a moved backend shows first as a dead address

    def _maintain(self) -> None:
        """Re-resolve hostnames: unresolved or failing ones often, the rest now
        and then. A failed lookup keeps the last good address."""
        last_full = time.monotonic()
        while not self._stopping.is_set():
            self._dns_now.wait(DNS_RETRY)
            self._dns_now.clear()
            if self._stopping.is_set():
                return
            full = time.monotonic() - last_full >= DNS_REFRESH
            if full:
                last_full = time.monotonic()
            hosts = {
                t.target.host
                for rt in list(self.routes.apps.values())
                for t in rt.targets
                if full or t.address is None or not t.healthy
            }
            fresh = {h: a for h, a in resolve_all(hosts, DNS_RETRY).items() if a is not None}
            for name in self.routes.update_addresses(fresh):
                log.info("app %s: target addresses updated from DNS", name)

    # -- stop ----------------------------------------------------------------

    def stop_accepting(self, successor: bool = False) -> None:
        """Idempotent; a second caller (a signal during a takeover) waits for the
        first to finish, so nothing is torn down while listeners are removed."""
        with self.reload_lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            self._dns_now.set()
            if self.watcher is not None:
                self.watcher.stop()
            self._stop_listening(successor)
            if successor and self.admin is not None:
                self.admin.stop()  # the successor serves the endpoint on the same socket
                self.admin = None

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
        self.health.stop()
        if self.admin is not None:
            self.admin.stop()
        self.relay.stop()


def run(
    config_path: str,
    *,
    steering: str | None = None,
    workers: int | None = None,
    relay: str | None = None,
    pipe_size: int | None = None,
    admin: tuple[str, int] | None = None,
    takeover: bool = False,
    control_socket: str = DEFAULT_CONTROL_SOCKET,
) -> int:
    """Serve until SIGTERM or SIGINT, then drain and return the exit status.
    SIGHUP reloads. With `takeover`, take the listening sockets (and steering) of
    the fastproxy running behind `control_socket` first. Raises ConfigError,
    ListenError or TakeoverError (one-line) before serving."""
    options = Options(
        steering=steering, workers=workers, relay=relay, pipe_size=pipe_size, admin=admin
    )
    config = options.apply(load_config(config_path))
    successor = Successor(control_socket) if takeover else None
    handover = successor.handover if successor is not None else None
    server = Server(config, config_path=config_path, options=options, inherited=handover)
    stop = threading.Event()
    stop_now = threading.Event()
    reload_requested = threading.Event()

    wake = threading.Event()  # the main loop sleeps on this; signals set it

    def on_stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            stop_now.set()  # a second signal: do not wait for connections
        stop.set()
        wake.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload_requested.set()
        wake.set()

    handlers = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop, signal.SIGHUP: on_hup}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    control: ControlServer | None = None
    try:
        try:
            server.start()
        except BaseException:
            if successor is not None:
                successor.abandon()  # the running process goes on as before
            raise
        if successor is not None:
            successor.ready()
            log.info("took over from pid %d", handover.pid if handover else 0)
        try:
            control = ControlServer(
                control_socket, server.handover, server.reload_lock, server.yield_to_successor
            )
            control.start()
        except OSError as exc:
            log.warning("no control socket at %s (no takeover possible): %s", control_socket, exc)
        while not stop.is_set():
            wake.wait(0.2)  # a successor is noticed within 0.2 s, a signal at once
            wake.clear()
            if server.successor_ready.is_set():
                break
            if reload_requested.is_set():
                reload_requested.clear()
                server.try_reload("SIGHUP")
        timeout = server.config.drain_timeout
        log.info("stopping: no new connections; draining for up to %gs", timeout)
        server.stop_accepting()
        if not server.drain(timeout, stop_now):
            log.info("closing %d connections still open", server.relay.connections())
        server.close()
        log.info("stopped")
        return 0
    finally:
        if control is not None:
            control.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
