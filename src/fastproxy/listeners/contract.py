"""What a steering mode's listeners must do so that a reload and an upgrade are the
same few all-or-nothing steps, whichever the mode:

    reload:   prepare(ports) -> retire -> (routes change) -> open -> commit
              any failure after prepare: rollback, and the running config stays whole
    upgrade:  adopt(handover) ... READY/BYE ... take_over()
              nothing the successor does before take_over() changes what the running
              process serves; a successor that fails before it only releases

`PortListeners` (one socket per port) and `SteeredListeners` (bpf: one socket for
every port) implement it.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

Described = tuple[dict[str, Any], socket.socket]  # a socket and how a successor finds its role


@dataclass
class Change:
    """The listener side of one reload, from prepare() to commit() or rollback()."""

    wanted: dict[int, str]  # port -> app of the new config
    previous: frozenset[int]  # ports served before
    opened: dict[int, list[socket.socket]] = field(default_factory=dict)  # ports mode
    retired: bool = False  # removed ports stopped accepting
    started: bool = False  # added ports accept

    @property
    def added(self) -> frozenset[int]:
        return frozenset(self.wanted.keys() - self.previous)

    @property
    def removed(self) -> frozenset[int]:
        return frozenset(self.previous - self.wanted.keys())


class ListenerSet(Protocol):
    mode: str  # "ports" or "bpf", as /status shows it

    def prepare(self, ports: Mapping[int, str]) -> Change:
        """Everything that can fail, with no visible effect (ListenError)."""

    def retire(self, change: Change) -> None:
        """Ports that go away stop accepting (before the routes change)."""

    def open(self, change: Change) -> None:
        """Ports new in the config accept (after the routes change)."""

    def commit(self, change: Change) -> None:
        """Let go of what rollback would have needed."""

    def rollback(self, change: Change) -> None:
        """Back to exactly what was served before prepare(), whatever step failed."""

    def take_over(self) -> None:
        """Successor only, after the running process has stopped accepting: serve."""

    def restore(self) -> None:
        """A successor gave up half way: make sure what we serve is still in effect."""

    def handover(self) -> list[Described]:
        """Our listening sockets, for a successor."""

    def close(self, *, successor: bool) -> None:
        """Stop accepting. With a successor (or before take_over()), release only:
        the sockets and pinned state live on in the other process."""

    def counters(self) -> dict[str, int] | None:
        """Steering counters (bpf mode), else None."""
