"""One fastproxy process from start to exit: `run()` is what `fastproxy serve` calls.
It opens the config source, drops privileges, takes over from a running fastproxy
(or systemd's kept sockets), starts the Server (server.py), then turns the main loop:
signals (reload, stop, log reopen), a successor's takeover, the drain and the exit."""

from __future__ import annotations

import contextlib
import logging
import signal

from . import plausibility
from .cluster.options import DEFAULT_CACHE_DIR as DEFAULT_STATE_DIR
from .cluster.options import ClusterOptions, is_etcd_url
from .control.adminsocket import DEFAULT_PATH as DEFAULT_ADMIN_SOCKET
from .control.handover import DEFAULT_PATH as DEFAULT_CONTROL_SOCKET
from .control.handover import ControlServer, Successor, TakeoverError, private_directory
from .control.privileges import forbid_new_privileges, target
from .control.sdnotify import notify
from .failpoints import failpoint
from .listeners.fdstore import FdStore
from .listeners.fdstore import inherited as systemd_sockets
from .server import Server, raise_fd_limit
from .settings import Options
from .signals import SignalInbox
from .sources import ConfigSource, FileSource
from .wording import plural

log = logging.getLogger("fastproxy")


class Requests:
    """What the signals that arrived ask of the main loop."""

    def __init__(self) -> None:
        self.stops = 0  # SIGTERM/SIGINT seen: the first drains, a second cuts the drain
        self.reload = False  # SIGHUP
        self.reopen_log = False  # SIGUSR1

    def note(self, arrived: list[signal.Signals]) -> None:
        for sig in arrived:
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.stops += 1
            elif sig == signal.SIGHUP:
                self.reload = True
            elif sig == signal.SIGUSR1:
                self.reopen_log = True


def open_source(
    spec: str, cluster: ClusterOptions | None = None, *, watch: bool = True
) -> ConfigSource:
    """A file path, or etcd://HOST:PORT[,HOST:PORT...]/PREFIX (ConfigError if malformed).
    `watch`: reload a file when it changes (an etcd key is always watched)."""
    if is_etcd_url(spec):
        # Imported here: the etcd source (and its client library) only when one is named.
        from .cluster.etcd import EtcdURL
        from .cluster.source import EtcdSource

        return EtcdSource(EtcdURL.parse(spec), cluster or ClusterOptions())
    return FileSource(spec, watch=watch)


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
    admin_socket: str | None = DEFAULT_ADMIN_SOCKET,
    cluster: ClusterOptions | None = None,
    watch: bool = True,
    state_dir: str | None = DEFAULT_STATE_DIR,
) -> int:
    """Serve until SIGTERM or SIGINT, then drain and return the exit status.
    SIGHUP reloads. With `takeover`, take the listening sockets (and steering) of
    the fastproxy running behind `control_socket` first. `config_path` may be an
    etcd URL (open_source; `cluster` holds its settings). Raises ConfigError,
    ListenError or TakeoverError (one-line) before serving."""
    options = Options(
        steering=steering, workers=workers, relay=relay, pipe_size=pipe_size, admin=admin
    )
    source = open_source(config_path, cluster, watch=watch)
    config = options.apply(source.load())
    for warning in plausibility.warnings(config):
        log.warning("config: %s", warning)
    account = target(config.user, config.group)  # None unless we will drop root
    if account is not None:
        forbid_new_privileges()  # first: every thread inherits it
        # The control socket is bound after the drop: its directory must be the user's.
        with contextlib.suppress(OSError):  # refused again, with the reason, below
            private_directory(control_socket, account.uid)
    raise_fd_limit()  # before a takeover receives thousands of sockets
    # Opened before a takeover starts: a signal during it abandons the takeover instead
    # of killing us half way (the running process would survive that too). The handlers
    # do nothing but note the signal; this thread acts on it (signals.py says why).
    inbox = SignalInbox((signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1))
    asked = Requests()
    control: ControlServer | None = None
    try:
        proxy_uid = account.uid if account else None  # the running one may have dropped to it
        successor = Successor(control_socket, proxy_uid=proxy_uid) if takeover else None
        # A predecessor's sockets (--takeover), or the ones systemd kept for us (fd store,
        # socket activation).
        handover, stored = systemd_sockets(config.admin) if successor is None else (None, set())
        if successor is not None:
            handover = successor.handover
        server = Server(
            config,
            source=source,
            options=options,
            inherited=handover,
            fd_store=FdStore(stored),
            admin_socket=admin_socket,
            state_dir=state_dir,
        )
        try:
            server.start()
            if successor is not None:
                failpoint("takeover.before-ready")
                asked.note(inbox.wait(0))
                if asked.stops:
                    raise TakeoverError("stopped by a signal while starting")
        except BaseException:
            server.abandon()
            if successor is not None:
                successor.abandon()  # the running process goes on as before
                log.info("takeover abandoned: the running fastproxy goes on serving")
            raise
        if successor is not None:
            successor.ready()  # from here on we serve: the predecessor stops accepting
            server.go_live()
            log.info("took over from pid %d", successor.handover.pid)
        elif handover is not None:
            server.go_live()  # systemd's sockets: nobody else accepts on them
        try:
            control = ControlServer(
                control_socket,
                server.handover,
                server.reload_lock,
                server.yield_to_successor,
                server.takeover_abandoned,
            )
            control.start()
        except OSError as exc:
            log.warning("no control socket at %s (no takeover possible): %s", control_socket, exc)
        notify("READY=1")
        server.main_loop.start()
        while not asked.stops:
            server.main_loop.beat()
            failpoint("main.loop")
            if server.successor_ready.is_set():
                break
            if asked.reopen_log:
                asked.reopen_log = False
                server.access_log.reopen()  # logrotate moved the file away
            if asked.reload:
                asked.reload = False
                server.try_reload("SIGHUP")
            # A successor is noticed within 0.2 s, a signal at once.
            asked.note(inbox.wait(0.2))
        timeout = server.config.drain_timeout
        notify("STOPPING=1")
        log.info("stopping: no new connections; draining for up to %gs", timeout)
        server.stop_accepting()

        stops_before_drain = asked.stops

        def pause(seconds: float) -> bool:
            """While draining: a SIGTERM/SIGINT (beyond the one that began the drain)
            stops waiting for connections."""
            server.main_loop.beat()
            asked.note(inbox.wait(seconds))
            if asked.reopen_log:
                asked.reopen_log = False
                server.access_log.reopen()
            return asked.stops > stops_before_drain

        if not server.drain(timeout, pause):
            log.info("closing %s still open", plural(server.relay.connections(), "connection"))
        server.close()
        log.info("stopped")
        return 0
    finally:
        if control is not None:
            control.close()
        # A late SIGHUP or SIGUSR1 must not kill a process on its way out with exit 0.
        inbox.close(ignore=(signal.SIGHUP, signal.SIGUSR1))
