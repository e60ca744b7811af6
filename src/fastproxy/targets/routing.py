"""Maps the configuration onto the relay: app ids, counter slots, which port goes
to which app, and each target's address and state.

Ids and slots are keyed by name (app name; app name + target address), so a
reload that keeps an app or a target keeps its counters and its connections'
bookkeeping. Those of apps and targets a reload drops become spares: given back
whole if the name returns (a rolled-back reload loses no counts), else handed to a
new one, so a proxy whose targets churn never runs out. A spare counter slot is
handed on only once no route names it and no connection holds it, zeroed; a spare
app id or app slot only once the workers have also finished every event batch that
could have read the old port map or server-name table.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from .. import _relay
from ..config import App, Config, Target
from .resolver import Address

PROXY_PROTOCOL = {None: 0, "v1": 1, "v2": 2}
STATE_CODES = {
    "up": _relay.TARGET_UP,
    "down": _relay.TARGET_DOWN,
    "draining": _relay.TARGET_DRAINING,
    "disabled": _relay.TARGET_DISABLED,
}


def maglev_key(address: str) -> int:
    """A target's place in Balance: maglev's permutations: from its address alone, so
    that every instance with the same targets builds the same table."""
    return int.from_bytes(hashlib.blake2b(address.encode(), digest_size=8).digest(), "little")


@dataclass
class TargetRuntime:
    target: Target
    slot: int
    address: Address | None = None
    healthy: bool = True  # set by health checks
    admin: str | None = None  # "draining" or "disabled", set by an operator
    pushed: str = "up"  # the state last given to the relay (SlowStart starts at each "up")
    ejected_until: float = 0.0  # outlier ejection (outlier.py): monotonic end, 0 = not ejected
    ejections: int = 0
    weight: int | None = None  # set at run time (`fastproxy target weight`); None: the config's

    @property
    def state(self) -> str:
        if self.admin is not None:
            return self.admin
        if self.ejected_until:
            return "down"
        return "up" if self.healthy and self.address is not None else "down"


@dataclass
class AppRuntime:
    app: App
    app_id: int
    slot: int
    targets: list[TargetRuntime] = field(default_factory=list)


class Routes:
    """The live routing state, owned by the orchestrator thread."""

    def __init__(self, relay: _relay.Relay) -> None:
        self.relay = relay
        self.apps: dict[str, AppRuntime] = {}
        self.port_owner: Mapping[int, str] = {}
        self.sni_ports: set[int] = set()  # ports routed by TLS server name
        # Apps' TLS, loaded from their files (tlsconfig.load_contexts) before apply
        self.tls: dict[str, _relay.TlsContext] = {}
        self._app_ids: dict[str, int] = {}
        self._slots: dict[tuple[str, ...], int] = {}
        # slot -> ("app", name) or ("target", app name, address), for the access log
        self.slot_keys: dict[int, tuple[str, ...]] = {}
        self._known: dict[tuple[str, str], TargetRuntime] = {}
        # Ids and slots of apps and targets that went away, oldest first.
        self._spare_app_ids: dict[str, int] = {}
        self._spare_slots: dict[tuple[str, ...], int] = {}
        self._unsettled = False  # an app went away since the workers last quiesced
        # Last good answer per host: a reload whose lookup is slow or fails (or a
        # rollback, which resolves nothing) keeps routing to it.
        self.resolved: dict[str, Address] = {}
        # Held while routes change: the health thread and the admin endpoint
        # change target states while the main thread may be reloading.
        self.lock = threading.RLock()

    @property
    def slots_allocated(self) -> int:
        """Counter slots handed out so far, in use or spare."""
        return len(self._slots) + len(self._spare_slots)

    @property
    def app_ids_allocated(self) -> int:
        return len(self._app_ids) + len(self._spare_app_ids)

    def _slot(self, *key: str) -> int:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._spare_slots.pop(key, None)
            if slot is None:
                slot = self._hand_on_slot()
            self._slots[key] = slot
            self.slot_keys[slot] = key
        return slot

    def _hand_on_slot(self) -> int:
        """A spare slot nothing can reach any more, zeroed; else a new one."""
        for old, slot in self._spare_slots.items():
            if old[0] == "app":
                self._settle()  # a server-name table may name it, uncounted
            # A connection still counting into it, or a connecting one's route
            # naming it, keeps it out of use until it closes.
            if not self.relay.slot_in_use(slot):
                del self._spare_slots[old]
                if old[0] == "target":
                    self._known.pop((old[1], old[2]), None)
                self.relay.clear_slot(slot)
                return slot
        return self.slots_allocated

    def _app_id(self, name: str) -> int:
        app_id = self._app_ids.get(name)
        if app_id is None:
            app_id = self._spare_app_ids.pop(name, None)
            if app_id is None:
                app_id = self._hand_on_app_id()
            self._app_ids[name] = app_id
        return app_id

    def _hand_on_app_id(self) -> int:
        if not self._spare_app_ids:
            return self.app_ids_allocated
        self._settle()
        return self._spare_app_ids.pop(next(iter(self._spare_app_ids)))

    def _settle(self) -> None:
        """A worker may have read a removed app's id from the port map (or its slot
        from a server-name table) just before they changed: once every batch under
        way has ended, none has."""
        if self._unsettled:
            self.relay.quiesce()
            self._unsettled = False

    def _retire(self, apps: dict[str, AppRuntime]) -> None:
        """Make spares of the ids and slots of apps and targets that are gone."""
        for name in self._app_ids.keys() - apps.keys():
            self._spare_app_ids[name] = self._app_ids.pop(name)
            self._unsettled = True
        targets = {(name, t.target.address) for name, app in apps.items() for t in app.targets}
        kept = {("app", name) for name in apps} | {("target", *key) for key in targets}
        for key in self._slots.keys() - kept:
            self._spare_slots[key] = self._slots.pop(key)

    def apply(self, config: Config, addresses: Mapping[str, Address | None]) -> None:
        """Make the relay route as `config` says. Routes are published before the
        port map changes, so a port never points at an app without targets."""
        with self.lock:
            self._apply(config, addresses)

    def _apply(self, config: Config, addresses: Mapping[str, Address | None]) -> None:
        self._remember(addresses, {t.host for app in config.apps for t in app.targets})
        apps: dict[str, AppRuntime] = {}
        for app in config.apps:
            runtime = AppRuntime(app, self._app_id(app.name), self._slot("app", app.name))
            for target in app.targets:
                slot = self._slot("target", app.name, target.address)
                known = self._known.get((app.name, target.address))
                if known is None:
                    known = TargetRuntime(target, slot)
                    self._known[(app.name, target.address)] = known
                if known.target != target:
                    known.weight = None  # the config changed the target: its weight wins
                known.target = target
                known.address = self.resolved.get(target.host)
                runtime.targets.append(known)
            apps[app.name] = runtime
            self.publish(runtime)
        port_owner = config.port_owner()
        # Ports an app with ServerNames is on are routed by name; the others by port,
        # each set only if it changed (10,000 ports: one cheap pass, no per-port search).
        sni_ports = {port for app in config.apps if app.server_names for port in app.ports}
        port_apps = config.port_apps()
        for port in sni_ports:
            self._route_by_name(port, port_apps[port], apps)
        app_ids = {name: runtime.app_id for name, runtime in apps.items()}
        before, by_name_before = self.port_owner, self.sni_ports
        for port, name in port_owner.items():
            changed = before.get(port) != name or port in by_name_before
            if changed and port not in sni_ports:
                self.relay.set_port(port, app_ids[name])
        for port in self.port_owner.keys() - port_owner.keys():
            self.relay.set_port(port, -1)
        for name in self.apps.keys() - apps.keys():
            self.relay.remove_app(self.apps[name].app_id)
        self.apps = apps
        self.port_owner = port_owner
        self.sni_ports = sni_ports
        self._retire(apps)

    def _route_by_name(
        self, port: int, on_port: tuple[App, ...], apps: dict[str, AppRuntime]
    ) -> None:
        """A port whose clients go to an app by TLS server name (config/app.py made sure
        the apps on it may share it)."""
        default = [app for app in on_port if not app.server_names]
        counted = apps[(default or on_port)[0].name]
        names = [(name, apps[app.name].app_id) for app in on_port for name in app.server_names]
        self.relay.set_port_sni(
            port,
            names,
            default_app=apps[default[0].name].app_id if default else -1,
            accept_proxy=on_port[0].accept_proxy_protocol,
            need_local=any(app.proxy_protocol for app in on_port),
            count_slot=counted.slot,
            count_app=counted.app_id,
        )

    def _remember(self, addresses: Mapping[str, Address | None], hosts: set[str]) -> None:
        fresh = {host: a for host, a in addresses.items() if a is not None}
        self.resolved = {
            host: a for host in hosts if (a := fresh.get(host) or self.resolved.get(host))
        }

    def publish(self, runtime: AppRuntime) -> None:
        app = runtime.app
        targets = []
        for t in runtime.targets:
            self.relay.set_outlier_threshold(
                t.slot, app.outlier.consecutive_failures if app.outlier else 0
            )
            family, ip = t.address if t.address is not None else (0, "")
            targets.append(
                (
                    family,
                    ip,
                    t.target.port,
                    t.slot,
                    STATE_CODES[t.state],
                    t.weight or t.target.weight,
                    t.target.backup,
                    t.target.max_connections,
                    t.target.soft_limit,
                )
            )
        self.relay.set_app(
            runtime.app_id,
            targets=targets,
            app_slot=runtime.slot,
            balance=app.balance,
            connect_timeout=app.connect_timeout,
            idle_timeout=app.idle_timeout,
            max_connections=app.max_connections,
            proxy_protocol=PROXY_PROTOCOL[app.proxy_protocol],
            accept_proxy_protocol=app.accept_proxy_protocol,
            max_connections_per_source=app.max_connections_per_source,
            panic=app.panic,
            source_mask=app.source_mask,
            max_in_preface=app.max_connections_in_preface,
            rate=app.max_connection_rate,
            source_rate=app.max_connection_rate_per_source,
            allow=app.allow,
            deny=app.deny,
            proxy_senders=app.proxy_senders,
            keepalive=(
                None
                if app.keepalive is None
                else (app.keepalive.idle, app.keepalive.interval, app.keepalive.count)
            ),
            user_timeout=app.user_timeout,
            max_duration=app.max_duration,
            # Every connection looks at its target once per check interval, so that
            # OnTargetDown close and `target disable --close` take effect within one.
            down_check=app.health_check.interval,
            queue_timeout=app.queue_timeout,
            slow_start=app.slow_start,
            maglev_keys=[maglev_key(t.target.address) for t in runtime.targets]
            if app.balance == "maglev"
            else (),
            tls=self.tls.get(app.name) if app.tls is not None else None,
        )

    def update_addresses(self, addresses: Mapping[str, Address | None]) -> list[str]:
        """Apply fresh DNS answers; returns the apps whose routes changed."""
        with self.lock:
            return self._update_addresses(addresses)

    def _update_addresses(self, addresses: Mapping[str, Address | None]) -> list[str]:
        fresh = {h: a for h, a in addresses.items() if a is not None}
        self.resolved.update(fresh)
        changed = []
        for runtime in self.apps.values():
            dirty = False
            for t in runtime.targets:
                if t.target.host in fresh and fresh[t.target.host] != t.address:
                    t.address = fresh[t.target.host]
                    dirty = True
            if dirty:
                self.publish(runtime)
                changed.append(runtime.app.name)
        return changed

    def set_healthy(self, app_name: str, target: TargetRuntime, healthy: bool) -> None:
        with self.lock:
            went_down = target.healthy and not healthy
            target.healthy = healthy
            self._push_state(app_name, target)
            runtime = self.apps.get(app_name)
            if went_down and runtime is not None and runtime.app.on_target_down == "close":
                self.close_connections(target)

    def set_ejected(self, app_name: str, target: TargetRuntime, until: float) -> None:
        """Eject the target until the monotonic time `until` (outlier.py), or take
        it back (0)."""
        with self.lock:
            went_down = target.state == "up" and until > 0
            target.ejected_until = until
            self._push_state(app_name, target)
            runtime = self.apps.get(app_name)
            if went_down and runtime is not None and runtime.app.on_target_down == "close":
                self.close_connections(target)

    def close_connections(self, target: TargetRuntime) -> None:
        """Close the target's open connections (OnTargetDown close, `target disable
        --close`): each worker closes its own within the app's check interval."""
        self.relay.close_target(target.slot)

    def _target(self, app_name: str, address: str) -> tuple[AppRuntime, TargetRuntime]:
        """The app and its target an operator names; KeyError saying which is unknown."""
        runtime = self.apps.get(app_name)
        if runtime is None:
            raise KeyError(f'no app "{app_name}"')
        for target in runtime.targets:
            if target.target.address == address:
                return runtime, target
        raise KeyError(f'app "{app_name}" has no target {address}')

    def set_admin(
        self, app_name: str, address: str, action: str, close: bool = False
    ) -> TargetRuntime:
        """Operator control of one target: drain (no new connections, existing ones
        finish, checks go on), disable (the same, and no checks; with close, its open
        connections are closed too), enable."""
        with self.lock:
            runtime, target = self._target(app_name, address)
            target.admin = {"drain": "draining", "disable": "disabled", "enable": None}[action]
            self._push_state(app_name, target)
            if close:
                self.close_connections(target)
            return target

    def set_weight(self, app_name: str, address: str, weight: int) -> TargetRuntime:
        """Change one target's weight at run time (until the config changes it)."""
        if not 1 <= weight <= 1000:
            raise ValueError(f"weight must be between 1 and 1000, got {weight}")
        with self.lock:
            runtime, target = self._target(app_name, address)
            target.weight = weight
            self.publish(runtime)  # the round robin cycle and maglev table are rebuilt
            return target

    def _push_state(self, app_name: str, target: TargetRuntime) -> None:
        runtime = self.apps.get(app_name)
        if runtime is not None and target in runtime.targets:
            index = runtime.targets.index(target)
            if target.state == "up" and target.pushed != "up" and runtime.app.slow_start:
                self.relay.target_came_up(target.slot)  # SlowStart ramps from now
            target.pushed = target.state
            self.relay.set_target_state(runtime.app_id, index, STATE_CODES[target.state])

    def stats(self, slot: int) -> dict[str, int]:
        return dict(zip(_relay.STATS_FIELDS, self.relay.stats(slot)))
