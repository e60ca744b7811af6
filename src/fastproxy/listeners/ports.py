"""`ports` steering: one ordinary listening socket per port and Listen address."""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping

from .. import _relay
from ..control.handover import Handover
from ..failpoints import failpoint
from .contract import Change, Described
from .sockets import ListenError, open_listener

log = logging.getLogger("fastproxy")


class PortListeners:
    mode = "ports"

    def __init__(self, relay: _relay.Relay, hosts: tuple[str, ...]) -> None:
        self.relay = relay
        self.hosts = hosts
        self.sockets: dict[int, list[socket.socket]] = {}  # the ports we serve
        self._pending: Change | None = None  # a takeover's ports, until take_over()

    @classmethod
    def listen(
        cls, relay: _relay.Relay, hosts: tuple[str, ...], ports: Mapping[int, str]
    ) -> PortListeners:
        self = cls(relay, hosts)
        self._apply(self.prepare(ports))
        return self

    @classmethod
    def adopt(
        cls,
        relay: _relay.Relay,
        hosts: tuple[str, ...],
        handover: Handover,
        ports: Mapping[int, str],
    ) -> PortListeners:
        """The predecessor's sockets for our ports, and new ones for ports it did not
        serve; none accepts before take_over(), so giving up loses no client."""
        self = cls(relay, hosts)
        for desc, sock in handover.take("port"):
            if desc["port"] in ports:
                self.sockets.setdefault(desc["port"], []).append(sock)
            else:
                sock.close()  # the predecessor serves it until it stops accepting
        try:
            self._pending = self.prepare(ports)
        except BaseException:
            self.close(successor=True)
            raise
        return self

    def take_over(self) -> None:
        if self._pending is None:
            return
        change, self._pending = self._pending, None
        inherited = {port: socks for port, socks in self.sockets.items() if port in change.wanted}
        for port, socks in inherited.items():
            for sock in socks:
                self.relay.add_listener(sock.fileno(), port)
        try:
            failpoint("takeover.commit")
            self._apply(change)
        except Exception as exc:
            # Past READY: still serve. The ports inherited accept already (the
            # predecessor stopped); ports new in our config wait for a reload.
            self._close_opened(change)
            log.error("takeover: ports new in our config are not served (%s) until a reload", exc)

    def _apply(self, change: Change) -> None:
        try:
            self.retire(change)
            self.open(change)
        except BaseException:
            self.rollback(change)
            raise
        self.commit(change)

    # -- reload steps --------------------------------------------------------

    def prepare(self, ports: Mapping[int, str]) -> Change:
        change = Change(dict(ports), frozenset(self.sockets))
        try:
            for port in sorted(change.added):
                socks = change.opened.setdefault(port, [])
                for host in self.hosts:
                    socks.append(open_listener(host, port))
        except ListenError as exc:
            self._close_opened(change)
            raise ListenError(f'{exc} (app "{ports[port]}")') from None
        except BaseException:
            self._close_opened(change)
            raise
        return change

    def retire(self, change: Change) -> None:
        change.retired = True
        for port in sorted(change.removed):
            for sock in self.sockets[port]:
                if sock.fileno() in self._accepting():
                    self.relay.remove_listener(sock.fileno())
            failpoint("listeners.retire")

    def open(self, change: Change) -> None:
        change.started = True
        for port, socks in sorted(change.opened.items()):
            self.sockets[port] = socks
            for sock in socks:
                self.relay.add_listener(sock.fileno(), port)
            failpoint("listeners.open")

    def commit(self, change: Change) -> None:
        # Clients still in a removed port's accept queue are reset: the port goes away.
        for port in change.removed:
            for sock in self.sockets.pop(port, []):
                sock.close()

    def rollback(self, change: Change) -> None:
        accepting = self._accepting()
        for port, socks in change.opened.items():
            if self.sockets.get(port) is socks:
                del self.sockets[port]
            for sock in socks:
                if sock.fileno() in accepting:
                    self.relay.remove_listener(sock.fileno())
        self._close_opened(change)
        if change.retired:
            accepting = self._accepting()
            for port in change.removed:
                for sock in self.sockets.get(port, []):
                    if sock.fileno() not in accepting:
                        self.relay.add_listener(sock.fileno(), port)

    def _close_opened(self, change: Change) -> None:
        for socks in change.opened.values():
            for sock in socks:
                sock.close()
        change.opened.clear()

    def _accepting(self) -> set[int]:
        return set(self.relay.listener_fds)

    # -- upgrade and stop ----------------------------------------------------

    def restore(self) -> None:
        """Nothing to do: a successor holds copies of our sockets and cannot change them."""

    def handover(self) -> list[Described]:
        return [
            ({"role": "port", "port": port}, sock)
            for port, socks in self.sockets.items()
            for sock in socks
        ]

    def close(self, *, successor: bool) -> None:
        accepting = self._accepting()
        for socks in self.sockets.values():
            for sock in socks:
                if sock.fileno() in accepting:
                    self.relay.remove_listener(sock.fileno())
                sock.close()
        self.sockets.clear()
        if self._pending is not None:
            self._close_opened(self._pending)
            self._pending = None

    def counters(self) -> dict[str, int] | None:
        return None
