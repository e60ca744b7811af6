"""Relay: sockmap: bpf/relay.c, loaded with bcc like the steering program (and cached the
same way), attached as the verdict of its sockhash and handed to the relay, whose workers
put each established connection's two sockets in it (relay/sockmap.pxi).

Where the kernel cannot do it (not root, no bcc, the verifier or the attach refuses), the
relay stays with splice, and one log line says why.

It is also refused unless FASTPROXY_UNSAFE_SOCKMAP=1: on the kernels we have (6.18) the
redirect now and then hands the same skb to the program twice, so a whole segment is sent
twice and the stream is corrupted, with no fastproxy code running (more often when the
socket is in an epoll set, as the relay's must be: scripts/sockmap_duplicates.py).
A relay that may duplicate bytes must not carry traffic; the switch is for measuring."""

from __future__ import annotations

import logging
import os

from . import _relay
from .steering.bpfsys import prog_attach
from .steering.errors import SteeringUnavailable, describe
from .steering.loader import RELAY, Objects, compiler_missing, load_program

log = logging.getLogger("fastproxy")

UNSAFE_SWITCH = "FASTPROXY_UNSAFE_SOCKMAP"
KERNEL_DUPLICATES = (
    "the kernel's sk_skb redirect sometimes sends a segment twice, corrupting the stream;"
    f" {UNSAFE_SWITCH}=1 runs it anyway, for measuring only"
)


def _unavailable() -> str | None:
    """Why the program cannot be loaded here, if it cannot (before trying)."""
    if os.geteuid() != 0:
        return "not root"
    return compiler_missing(RELAY)


def load() -> Objects:
    """The program and its maps, the program attached to `sources` (the sockets whose
    bytes it moves). Raises SteeringUnavailable with a one-line reason."""
    reason = _unavailable()
    if reason:
        raise SteeringUnavailable(reason)
    objects = load_program(RELAY)
    try:
        prog_attach(objects.fds["prog"], objects.fds["sources"], RELAY.attach_type)
    except OSError as exc:
        objects.close()
        raise SteeringUnavailable(f"cannot attach the verdict program: {describe(exc)}") from None
    return objects


def attach(relay: _relay.Relay) -> Objects | None:
    """Make `relay` hand established connections to the kernel; the objects returned
    must stay open while it runs. None (and one log line) when it relays with splice."""
    if os.environ.get(UNSAFE_SWITCH) != "1":
        log.warning("relay: sockmap refused (%s), relaying with splice", KERNEL_DUPLICATES)
        return None
    try:
        objects = load()
    except SteeringUnavailable as exc:
        log.warning("relay: sockmap unavailable (%s), relaying with splice", exc)
        return None
    except Exception as exc:  # one line for the operator, never a traceback
        log.warning("relay: sockmap unavailable (%s), relaying with splice", describe(exc))
        return None
    relay.use_sockmap(objects.fds["socks"], objects.fds["sources"], objects.fds["peers"])
    # Said once at start, where the operator looks: the promises this mode breaks.
    log.warning(
        "relay: sockmap runs because %s=1: the kernel may send a segment twice (corrupting"
        " the stream) and gives no backpressure (see bpf/relay.c); for measuring only",
        UNSAFE_SWITCH,
    )
    return objects
