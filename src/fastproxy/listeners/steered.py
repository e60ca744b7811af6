"""`bpf` steering: one listening socket per Listen address (at most one per family), on
an ephemeral port; the sk_lookup program hands it the connections of every configured
port, and a reload only changes the program's port map."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Mapping

from .. import _relay
from ..control.handover import Handover
from ..failpoints import failpoint
from ..steering import Steering, SteeringUnavailable
from .contract import Change, Described
from .sockets import ListenError, check_port_free, listening_ports, open_listener

log = logging.getLogger("fastproxy")


class SteeredListeners:
    mode = "bpf"

    def __init__(
        self,
        relay: _relay.Relay,
        hosts: tuple[str, ...],
        sockets: list[socket.socket],
        steering: Steering,
        *,
        pending: bool,
    ) -> None:
        self.relay = relay
        self.hosts = hosts
        self.sockets = sockets
        self.steering = steering
        self._pending = pending  # a takeover's state: prepared, not yet in effect

    @classmethod
    def attach(
        cls, relay: _relay.Relay, hosts: tuple[str, ...], ports: Mapping[int, str]
    ) -> SteeredListeners:
        _check_free(hosts, ports, ports.keys())
        socks = [open_listener(host, 0) for host in hosts]
        try:
            steering = Steering.attach(socks, ports)
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        log.debug(
            "steering: program attached to this netns (link %d, prog %d), %d ports steered"
            " to %s, pinned in %s",
            steering.link_id,
            steering.prog_id,
            len(ports),
            ", ".join(str(sock.getsockname()[:2]) for sock in socks),
            steering.directory,
        )
        self = cls(relay, hosts, socks, steering, pending=False)
        self._accept()
        return self

    @classmethod
    def adopt(
        cls,
        relay: _relay.Relay,
        hosts: tuple[str, ...],
        handover: Handover,
        ports: Mapping[int, str],
    ) -> SteeredListeners:
        """Load our own program for the predecessor's socket(s), without attaching it: the
        predecessor's program keeps steering until take_over() swaps ours in atomically."""
        socks = [sock for _, sock in handover.take("steered")]
        try:
            steering = Steering.prepare(socks, ports)
        except SteeringUnavailable as exc:
            for sock in socks:
                sock.close()
            raise ListenError(f"takeover of bpf steering failed: {exc}") from None
        return cls(relay, hosts, socks, steering, pending=True)

    def take_over(self) -> None:
        if not self._pending:
            return
        try:
            failpoint("takeover.commit")
            self.steering.commit(takeover=True)
            self._pending = False
            log.debug("steering: our program swapped in (link %d)", self.steering.link_id)
        except Exception as exc:
            # Still serve: the predecessor's program steers its ports to these very sockets.
            log.error(
                "takeover: our steering program is not in effect (%s); ports new in "
                "our config are not steered until a restart",
                exc,
            )
        self._accept()

    def _accept(self) -> None:
        for sock in self.sockets:
            self.relay.add_listener(sock.fileno(), 0)

    # -- reload steps --------------------------------------------------------

    def prepare(self, ports: Mapping[int, str]) -> Change:
        change = Change(dict(ports), self.steering.ports)
        _check_free(self.hosts, ports, change.added)
        return change

    def retire(self, change: Change) -> None:
        change.retired = True
        self._set_ports(change.previous & change.wanted.keys())
        failpoint("listeners.retire")

    def open(self, change: Change) -> None:
        change.started = True
        self._set_ports(change.wanted.keys())
        failpoint("listeners.open")

    def commit(self, change: Change) -> None:
        pass

    def rollback(self, change: Change) -> None:
        if change.retired or change.started:
            self._set_ports(change.previous)

    def _set_ports(self, ports: Iterable[int]) -> None:
        wanted = frozenset(ports)
        before = self.steering.ports
        try:
            self.steering.set_ports(wanted)
        except SteeringUnavailable as exc:
            raise ListenError(str(exc)) from None
        log.debug(
            "steering: port map updated (%d added, %d removed, %d steered)",
            len(wanted - before),
            len(before - wanted),
            len(wanted),
        )

    # -- upgrade and stop ----------------------------------------------------

    def restore(self) -> None:
        if not self._pending:
            self.steering.restore()

    def handover(self) -> list[Described]:
        return [({"role": "steered"}, sock) for sock in self.sockets]

    def close(self, *, successor: bool) -> None:
        accepting = set(self.relay.listener_fds)
        for sock in self.sockets:
            if sock.fileno() in accepting:
                self.relay.remove_listener(sock.fileno())
            sock.close()
        self.sockets = []
        # Until take_over() the pins are the predecessor's; after a handover, the successor's.
        if successor or self._pending:
            self.steering.release()
        else:
            try:
                self.steering.close()
            except SteeringUnavailable as exc:  # its pins stay, for the next start to replace
                log.warning("steering: not cleaned up: %s", exc)

    def counters(self) -> dict[str, int] | None:
        return self.steering.counters()


def _check_free(hosts: tuple[str, ...], owners: Mapping[int, str], ports: Iterable[int]) -> None:
    """Steered ports are never bound: refuse to shadow another program's listener. Only
    ports some socket listens on (at any address) get the trial bind: with 10,000 ports,
    10,000 binds were a fifth of the start-up (benchmarks/results/profiles/startup-*.txt)."""
    listening = listening_ports()
    for port in sorted(ports):
        if listening is not None and port not in listening:
            continue
        for host in hosts:
            try:
                check_port_free(host, port)
            except ListenError as exc:
                raise ListenError(f'{exc} (app "{owners[port]}")') from None
