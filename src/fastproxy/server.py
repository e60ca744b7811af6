"""The orchestrator: builds the relay from a Config, listens (one socket per port,
or one steered socket for all), runs health checks and the admin endpoint, keeps
DNS fresh, reloads, and shuts down gracefully. process.run() is what `fastproxy
serve` calls: it makes the Server and turns the main loop."""

from __future__ import annotations

import functools
import logging
import os
import resource
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import __version__, _relay, plausibility
from .config import Config, ConfigError
from .control.admin import AdminServer
from .control.admintoken import ensure_token
from .control.handover import Handover
from .control.preload import load_late_imports
from .control.privileges import drop_to, target
from .control.sdnotify import notify, reloading
from .control.watchdog import MainLoopWatchdog
from .failpoints import failpoint
from .listeners.contract import Change, ListenerSet
from .listeners.fdstore import FdStore
from .listeners.ports import PortListeners
from .listeners.sockets import ListenError
from .observe.accesslog import AccessLog
from .settings import Options, keep_restart_only, warn_any_proxy_sender
from .sources import ConfigSource, ReloadError
from .targets.health import HealthChecker
from .targets.outlier import OutlierDetector
from .targets.report import app_reports
from .targets.resolver import resolve_all
from .targets.routing import Routes, TargetRuntime
from .targets.state import TargetStateStore
from .tlsconfig import ktls_available, load_contexts
from .wording import plural

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("fastproxy")

STARTUP_DNS_WAIT = 1.0  # seconds start-up and reloads wait for DNS before going on
DNS_REFRESH = 30.0  # re-resolve hostnames this often
DNS_RETRY = 5.0  # ...and unresolved ones (or ones whose target went down) this often
TICKET_KEY_ROTATION = 3600.0  # a new TLS session ticket key this often (relay/tls.pxi)


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
        source: ConfigSource | None = None,
        options: Options | None = None,
        inherited: Handover | None = None,
        fd_store: FdStore | None = None,
        admin_socket: str | None = None,
        state_dir: str | None = None,
    ) -> None:
        self.config = config
        self.target_state = TargetStateStore(state_dir)
        self.admin_socket = admin_socket  # the admin API's unix socket; None: none
        self.inherited = inherited  # sockets handed over by the process we replace
        self.source = source  # where reloads read the config from
        self.options = options or Options()
        self.workers = config.workers or os.cpu_count() or 1
        self.relay = _relay.Relay(
            workers=self.workers, splice=config.relay != "copy", pipe_size=config.pipe_size
        )
        self.relay_mode = config.relay
        self.routes = Routes(self.relay)
        self.steering_mode = "ports"
        self.listeners: ListenerSet | None = None
        self.reloads = {"success": 0, "failure": 0}
        # Settings the config source changed that only a restart applies (config names).
        self.restart_required: list[str] = []
        self.helper_errors = {"dns": 0}  # unexpected errors a helper thread survived
        self.started_at = time.monotonic()
        self.health = HealthChecker(self.routes, on_down=self._target_down)
        self.outliers = OutlierDetector(self.routes)
        self.access_log = AccessLog(self.relay, self.routes)
        self.admin: AdminServer | None = None
        # One change of listeners at a time: reloads, a takeover, stopping.
        self.reload_lock = threading.RLock()
        self._stopping = threading.Event()
        self.successor_ready = threading.Event()
        self._dns_now = threading.Event()
        self._maintenance = threading.Thread(
            target=self._maintain, name="fastproxy-dns", daemon=True
        )
        # run()'s loop beats it; /healthz says so when the loop stops turning.
        self.main_loop = MainLoopWatchdog()
        # systemd keeps our listening sockets across restarts
        self.fd_store = fd_store or FdStore()

    @functools.cached_property
    def registry(self) -> CollectorRegistry:
        """Made at the first scrape: prometheus_client is a tenth of the start-up's imports."""
        from .observe.metrics import ProxyCollector, make_registry

        source = self.source
        return make_registry(
            ProxyCollector(
                self.routes,
                self.reloads,
                self._steering_counters,
                lambda: self.health.checks_done,
                source.gauges if source is not None else dict,
                self.access_log.dropped,
                self.health.report,
                {"steering": self.steering_mode, "relay": self.relay_mode},
                self._steering_denied,
            )
        )

    # -- start ---------------------------------------------------------------

    def start(self) -> None:
        """Bind, load and start everything. A fresh process then serves at once; a
        successor serves only at go_live(), once its predecessor has stopped accepting,
        so one that fails or is stopped before that has changed nothing."""
        raise_fd_limit()
        token = ensure_token(self.config.admin_token_file)  # TokenError before any change
        addresses = self._resolve(self.config)
        warn_any_proxy_sender(self.config)
        self.routes.tls = load_contexts(self.config)  # ConfigError: a file cannot serve
        if self.routes.tls:
            log.info(
                "TLS: %s",
                "kernel TLS available: records go to the kernel and bytes are spliced"
                if ktls_available()
                else "no kernel TLS here (/proc/net/tls_stat missing): bytes are copied"
                " through OpenSSL",
            )
        self.routes.apply(self.config, addresses)
        self.target_state.restore(self.routes)
        try:
            self.listeners = self._listen()
            self._admission(self.config)
            self.steering_mode = self.listeners.mode
            self.admin = self._admin_server(token)
        except BaseException:
            self._release_listeners()
            raise
        self.relay.start()
        self.health.start()
        self.outliers.start()
        self._maintenance.start()
        if self.inherited is None:
            self.go_live()

    def go_live(self) -> None:
        """Accept on every port and serve the admin endpoint (and the steering program,
        for a successor: swapped in atomically for its predecessor's)."""
        assert self.listeners is not None and self.admin is not None
        self.listeners.take_over()
        # Root's work is done. Threads started from here on (admin, watcher, control)
        # inherit the capabilities kept; the relay's and helpers' keep none.
        if self.config.user is not None and os.geteuid() == 0:
            load_late_imports()  # the user may not be able to read them (preload.py)
        drop_to(self.config.user, self.config.group, bpf=self.steering_mode == "bpf")
        # Opened as the user, like every reopen after it (SIGUSR1).
        self.access_log.configure(self.config.access_log)
        if self.source is not None:
            self.source.start(self.reload, self._describe)
        self.admin.start()  # last: /healthz checks the threads above
        self.fd_store.sync(self.handover().sockets)
        log.info(
            "serving %s on %s (steering=%s, relay=%s, workers=%d, admin=%s:%d)",
            plural(len(self.config.apps), "app"),
            plural(len(self.routes.port_owner), "port"),
            self.steering_mode,
            self.relay_mode,
            self.workers,
            *self.admin.address,
        )

    def _resolve(self, config: Config) -> dict[str, Any]:
        hosts = {t.host for app in config.apps for t in app.targets}
        addresses = resolve_all(hosts, STARTUP_DNS_WAIT)
        for host, address in sorted(addresses.items()):
            if address is None and host not in self.routes.resolved:
                log.warning("target host %s does not resolve (yet): its targets are down", host)
        return addresses

    def _admin_server(self, token: str) -> AdminServer:
        host, port = self.config.admin
        account = target(self.config.user, self.config.group)  # the socket is the user's
        try:
            return AdminServer(
                self,
                host,
                port,
                self._inherited_admin(),
                token=token,
                unix_path=self.admin_socket,
                unix_sock=self._inherited_admin_unix(),
                owner=account.uid if account else None,
            )
        except OSError as exc:
            raise ListenError(
                f"cannot serve the admin endpoint on {host}:{port}: {exc.strerror}"
            ) from None

    def _inherited_admin(self) -> socket.socket | None:
        if self.inherited is None:
            return None
        for desc, sock in self.inherited.take("admin"):
            if [desc["host"], desc["port"]] == list(self.config.admin):
                return sock
            sock.close()  # the admin address changed: bind the new one
        return None

    def _inherited_admin_unix(self) -> socket.socket | None:
        if self.inherited is None:
            return None
        for desc, sock in self.inherited.take("admin-unix"):
            if desc["path"] == self.admin_socket:
                return sock
            sock.close()  # another path: bind ours
        return None

    def _listen(self) -> ListenerSet:
        ports = self.routes.port_owner
        hosts = self.config.listen
        if self.inherited is not None:
            # An upgrade keeps its predecessor's steering mode: bpf state and sockets go together.
            if self.inherited.steering == "bpf" and self.inherited.take("steered"):
                from .listeners.steered import SteeredListeners

                return SteeredListeners.adopt(self.relay, hosts, self.inherited, ports)
            return PortListeners.adopt(self.relay, hosts, self.inherited, ports)
        # A second instance must not run on unserved: another one's program would take
        # the ports it steers whatever mode we chose (HAProxy would get EADDRINUSE). Its
        # steering is not ours to share either; only a ports-mode instance on other
        # ports may run beside it.
        from .steering.pins import DEFAULT_PIN_ROOT, live_owner, steered_ports

        mode = self.config.steering
        owner = live_owner(DEFAULT_PIN_ROOT)
        if owner is not None:
            theirs = steered_ports(owner[1])
            taken = sorted(set(ports) & theirs) if theirs is not None else []
            if mode in ("auto", "bpf") or taken or theirs is None:
                what = f"port {taken[0]}" if taken else "this network namespace's ports"
                raise ListenError(
                    f"another fastproxy (pid {owner[0]}) steers {what} ({owner[1]}):"
                    " stop it, or upgrade it with --takeover"
                )
        if mode in ("auto", "bpf"):
            from . import steering

            reason = steering.probe() or self._bpf_listen_problem()
            if reason is None:
                from .listeners.steered import SteeredListeners

                try:
                    return SteeredListeners.attach(self.relay, hosts, ports)
                except steering.SteeringUnavailable as exc:
                    reason = str(exc)
            if mode == "bpf":
                raise ListenError(f"bpf steering unavailable: {reason}")
            log.info("steering: using ports mode (bpf unavailable: %s)", reason)
        return PortListeners.listen(self.relay, hosts, ports)

    def _bpf_listen_problem(self) -> str | None:
        families = [":" in host for host in self.config.listen]
        if len(families) != len(set(families)):
            return "bpf steering serves one Listen address per address family"
        return None

    def _release_listeners(self, successor: bool = False) -> None:
        if self.listeners is not None:
            listeners, self.listeners = self.listeners, None
            listeners.close(successor=successor)

    def _steering_counters(self) -> dict[str, int] | None:
        return self.listeners.counters() if self.listeners is not None else None

    def _admission(self, config: Config) -> None:
        """With bpf steering, Allow / Deny go into the sk_lookup program too, so a
        refused client is dropped before it costs a descriptor (steering/admission.py)."""
        steering = getattr(self.listeners, "steering", None)
        if steering is not None:
            from .steering.admission import policies

            steering.set_admission(*policies(config, self.routes))

    def _steering_denied(self) -> dict[int, int]:
        steering = getattr(self.listeners, "steering", None)
        return steering.denied() if steering is not None else {}

    # -- upgrade: the running process's side -----------------------------------

    def handover(self) -> Handover:
        """Our listening sockets, for a successor (see control/handover.py)."""
        socks = self.listeners.handover() if self.listeners is not None else []
        if self.admin is not None:
            host, port = self.admin.address
            socks.append(({"role": "admin", "host": host, "port": port}, self.admin.socket))
            if self.admin.unix_socket is not None:
                desc = {"role": "admin-unix", "path": self.admin.unix_path}
                socks.append((desc, self.admin.unix_socket))
        return Handover(self.steering_mode, socks)

    def yield_to_successor(self) -> None:
        """A new process accepts on our sockets now: stop accepting and drain."""
        log.info("takeover: a new process is serving; draining")
        self.stop_accepting(successor=True)
        self.successor_ready.set()

    def takeover_abandoned(self) -> None:
        """A successor went away before READY. It cannot have changed what we serve,
        but make sure: our steering program must still be the one in effect."""
        with self.reload_lock:
            if self.listeners is None:
                return
            try:
                self.listeners.restore()
            except Exception as exc:
                log.error("takeover abandoned, and our steering could not be checked: %s", exc)

    # -- reload --------------------------------------------------------------

    def reload(self, reason: str) -> list[str]:
        """Apply the config again, all or nothing. Invalid, or any step failing:
        ReloadError, and the running config stays whole. Valid: new ports accept at once,
        removed ports stop, target and policy changes apply to new connections;
        established connections are untouched. Returns the settings that changed but
        need a restart (kept as they were until then)."""
        if self.source is None:
            raise ReloadError("no config source to reload from")
        with self.reload_lock:
            if self._stopping.is_set():
                raise ReloadError("shutting down")
            reloading()  # systemd: "reloading" until the READY=1 below
            try:
                new, pending = self._load_for_reload()
                self._apply(new)
            except Exception as exc:
                self.reloads["failure"] += 1
                known = (ConfigError, ListenError, ReloadError)
                why = str(exc) if isinstance(exc, known) else f"{type(exc).__name__}: {exc}"
                log.error("reload (%s) rejected, the running config stays: %s", reason, why)
                log.debug("reload failure", exc_info=True)
                raise ReloadError(why) from None
            finally:
                notify("READY=1")
            self.reloads["success"] += 1
            log.info(
                "reloaded (%s): %s on %s",
                reason,
                plural(len(new.apps), "app"),
                plural(len(self.routes.port_owner), "port"),
            )
            self.restart_required = pending
            return pending

    def try_reload(self, reason: str) -> bool:
        try:
            self.reload(reason)
        except ReloadError:
            return False
        return True

    def _load_for_reload(self) -> tuple[Config, list[str]]:
        assert self.source is not None
        new = self.options.apply(self.source.load())
        log.debug("reload: %s read and valid", new.source)
        for warning in plausibility.warnings(new):
            log.warning("reload: %s", warning)
        return keep_restart_only(new, self.config)

    def _apply(self, new: Config) -> None:
        """Ports that go away stop first, routes change, then new ports open: no moment
        where a port accepts a client and has no app for it. A step that fails undoes
        the ones before it."""
        if self.listeners is None:
            raise ReloadError("not listening")
        # Certificates and keys are read again, changed or not: a renewed file is
        # picked up. One that cannot serve rejects the reload before anything changed.
        tls = load_contexts(new)
        addresses = self._resolve(new)
        warn_any_proxy_sender(new)
        change = self.listeners.prepare(new.port_owner())  # may fail: nothing changed yet
        log.debug(
            "reload: prepared: %s to add, %s to remove",
            plural(len(change.added), "port"),
            plural(len(change.removed), "port"),
        )
        old_tls = self.routes.tls
        try:
            failpoint("reload.prepared")
            self.listeners.retire(change)
            log.debug("reload: removed ports stopped accepting")
            failpoint("reload.retired")
            self.routes.tls = tls
            self.routes.apply(new, addresses)
            log.debug("reload: routes of %s published", plural(len(new.apps), "app"))
            failpoint("reload.routed")
            self.listeners.open(change)
            log.debug("reload: added ports accept")
            self._admission(new)
            failpoint("reload.opened")
            self.target_state.save(self.routes)
        except BaseException:
            self.routes.tls = old_tls  # the rollback republishes the old certificates
            self._roll_back(change)
            raise
        self.listeners.commit(change)
        self.access_log.configure(new.access_log)
        self.config = new
        self.fd_store.sync(self.handover().sockets)

    def _roll_back(self, change: Change) -> None:
        assert self.listeners is not None
        try:
            self.routes.apply(self.config, {})  # keeps every address it had
            self.listeners.rollback(change)
            self._admission(self.config)  # the sk_lookup program may hold the new lists
        except Exception as exc:  # nothing left to undo with: say so loudly
            log.critical("reload: rolling back failed, serving may be incomplete: %s", exc)

    # -- operator actions and status -----------------------------------------

    def set_target(self, app: str, target: str, action: str, close: bool = False) -> dict[str, Any]:
        runtime = self.routes.set_admin(app, target, action, close)
        log.info(
            "app %s: target %s: %s%s (operator)",
            app,
            target,
            action,
            ", closing its connections" if close else "",
        )
        self.target_state.save(self.routes)
        return {"app": app, "target": target, "state": runtime.state}

    def set_weight(self, app: str, target: str, weight: int) -> dict[str, Any]:
        runtime = self.routes.set_weight(app, target, weight)
        log.info("app %s: target %s: weight %d (operator)", app, target, weight)
        self.target_state.save(self.routes)
        return {"app": app, "target": target, "state": runtime.state, "weight": weight}

    def status(self) -> dict[str, Any]:
        apps = app_reports(self.routes, self.health)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "steering": self.steering_mode,
            "relay": self.relay_mode,
            "workers": self.workers,
            "uptime": round(time.monotonic() - self.started_at, 3),
            "connections": self.relay.connections(),
            "worker_connections": self.relay.worker_connections(),
            "reloads": dict(self.reloads),
            "restart_required": list(self.restart_required),
            "health_check_errors": dict(self.health.errors),
            "apps": apps,
        }

    # -- background upkeep ---------------------------------------------------

    def _describe(self) -> dict[str, Any]:
        """What a cluster registration says about this instance."""
        return {"steering": self.steering_mode, "healthy": not self._stopping.is_set()}

    def _target_down(self, target: TargetRuntime) -> None:
        self._dns_now.set()  # a moved backend shows first as a dead address

    def _maintain(self) -> None:
        """Re-resolve hostnames: unresolved or failing ones often, the rest now
        and then. A failed lookup keeps the last good address. An unexpected error
        is logged and the loop goes on: this thread must outlive any one lookup."""
        last_full = last_rotation = time.monotonic()
        while not self._stopping.is_set():
            self._dns_now.wait(DNS_RETRY)
            self._dns_now.clear()
            if self._stopping.is_set():
                return
            if time.monotonic() - last_rotation >= TICKET_KEY_ROTATION:
                # TLS session tickets: a new key seals them; the two before still open
                # theirs, so a ticket resumes for two to three periods.
                _relay.rotate_ticket_keys()
                last_rotation = time.monotonic()
            full = time.monotonic() - last_full >= DNS_REFRESH
            if full:
                last_full = time.monotonic()
            try:
                self._refresh_dns(full)
            except Exception as exc:
                self.helper_errors["dns"] += 1
                log.error("DNS refresh failed (will retry): %s: %s", type(exc).__name__, exc)

    def _refresh_dns(self, full: bool) -> None:
        failpoint("dns.refresh")
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
            if self.source is not None:
                self.source.stop()
            # With systemd keeping our sockets, leave them (and bpf steering into them)
            # as for a successor: the next start takes them back; clients wait meanwhile.
            self._release_listeners(successor or self.fd_store.enabled)
            if successor and self.admin is not None:
                self.admin.stop(handed_over=True)  # the successor serves on the same sockets
                self.admin = None

    def drain(self, timeout: float, pause: Callable[[float], bool] | None = None) -> bool:
        """Wait for open connections to finish; False if some were still open.
        `pause(seconds)` sleeps between looks and returns True to stop waiting."""
        deadline = time.monotonic() + timeout
        while self.relay.connections() > 0:
            if time.monotonic() >= deadline:
                return False
            if pause is None:
                time.sleep(0.05)
            elif pause(0.05):
                return False
        return True

    def close(self) -> None:
        self.stop_accepting()
        self.main_loop.stop()
        self.health.stop()
        self.outliers.stop()
        if self.admin is not None:
            self.admin.stop()
        self.relay.stop()
        self.access_log.close()

    def abandon(self) -> None:
        """A successor giving up before go_live(): release what it holds (copies of its
        predecessor's sockets, a steering program never put in effect) and stop."""
        with self.reload_lock:
            self._stopping.set()
            self._dns_now.set()
            self._release_listeners()
        self.health.stop()
        self.outliers.stop()
        if self.admin is not None:
            self.admin.stop()
        self.relay.stop()
        self.access_log.close()

    # -- health of the process itself ----------------------------------------

    def healthz(self) -> tuple[int, str]:
        """What GET /healthz answers: 503 while draining, so a load balancer in
        front stops sending, and when a helper thread has died."""
        if self._stopping.is_set():
            return 503, "draining"
        stuck = self.main_loop.stalled()
        if stuck is not None:
            return 503, f"main loop stuck for {stuck:.0f}s"
        helpers = {
            "health-check": self.health.alive(),
            "DNS": self._maintenance.is_alive(),
            "config-watch": self.source is None or self.source.alive(),
        }
        dead = [name for name, alive in helpers.items() if not alive]
        if dead:
            return 503, f"helper thread died: {', '.join(dead)}"
        return 200, "ok"
