"""What direct and proxied observations may differ in: every allowed difference is a row
of ALLOWED, with why a proxy must differ there; nothing else may differ.

A scenario is built so that its direct outcome is deterministic (a side resets only after
its bytes are acknowledged; see scenario.py), and a scenario whose proxied run differs is
run direct twice more: the proxied outcome must match one of the direct ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transparency.endpoint import Obs, expected_digest
from transparency.scenario import RESETS, Scenario, Side

FIN_RESETS = ("fin-rst", "fin-close-unread")  # a FIN, then a reset

ALLOWED = {
    "urgent bytes": "Urgent bytes are not compared, only data bytes are: the relay drops an"
    " urgent byte (as most proxies do), and a direct receiver gets an earlier urgent byte as"
    " data when a newer mark overtakes it unread (Linux tcp_check_urg). Data bytes are exact.",
    "reset cuts held bytes": "After a reset with no FIN before it (SO_LINGER 0 or close with"
    " unread bytes), a receiver may get fewer bytes before its reset than direct: the bytes the"
    " proxy still held for it when it passed the reset on (the relay gives them a grace) are"
    " lost with the reset. Still a reset, and still a prefix of the data.",
    "reset before any byte": "A target that resets before any byte went either way looks to"
    " the relay like a failed connect: it fails over to another target, or with none left"
    " closes the client as for a refused connect. So a client that read nothing may see EOF"
    " where direct it saw the reset.",
    "error taken by a write": "Linux reports a reset once, to whichever call comes first: a"
    " side whose own write failed may then read EOF where it would have read the reset.",
    "writes racing a reset": "A side's writes (how much was taken, which error) are compared"
    " only when its peer reads to the end: when the peer resets instead, whether a write"
    " still fits before the reset arrives is timing, direct as well.",
    "reader cut by its own end": "A side that resets while reading stops reading when it"
    " resets: how far it got is timing, so it is not compared.",
    "writes held behind a FIN and a reset": "A side that sent its FIN and then reset (SO_LINGER"
    " 0, or close with unread bytes) ends only the other direction (SPEC 11): the relay still"
    " owes the other side every byte sent before that FIN, with no deadline but IdleTimeout,"
    " and TCP cannot reset one direction alone, so it reads nothing more from that side"
    " meanwhile. A side that never reads never takes those bytes, and its writes wait (until"
    " the IdleTimeout; the scenario's 20 s come first) where direct they went through. The"
    " reset also comes sooner than direct: the relay acknowledges bytes that side would not.",
}

# Differences of a relay bug known and not yet fixed: the short run is xfailed while all
# the differences it finds are of these kinds. Empty: the two that issue 18 listed
# ("urgent truncates the stream", "reset after FIN loses the reply") are fixed, and
# _kind still names them, so a regression fails by name.
KNOWN_BUGS: dict[str, str] = {}


def _kind(sender: Side, reader: Side, direct: Sequence[Obs], proxied: Obs) -> str:
    """Which KNOWN_BUGS entry a difference in what `reader` read looks like."""
    most = max(d.got for d in direct)
    all_eof = all(d.end == "eof" for d in direct)
    # A reset, or an EOF after fewer bytes when its own write took the reset first.
    reset = proxied.end == "reset" or (_ending(proxied)[1] == "eof|reset" and proxied.got < most)
    if sender.end in ("fin-rst", "fin-close-unread") and all_eof and reset:
        return "reset after FIN loses the reply"
    if sender.urgent() and proxied.end == "eof" and proxied.got < most:
        return "urgent truncates the stream"
    # The reader's own stream was cut at its urgent mark: the relay, taking its direction
    # for ended, closes it with bytes unread, and the kernel resets it.
    if reader.urgent() and reset and all_eof:
        return "urgent truncates the stream"
    return "unexplained"


@dataclass(frozen=True)
class Difference:
    scenario: Scenario
    mode: str
    kind: str  # a KNOWN_BUGS key or "unexplained"
    what: str

    def __str__(self) -> str:
        return f"[{self.mode}] {self.kind}: {self.what} | {self.scenario}"


def _ending(obs: Obs) -> tuple[int, str]:
    end = obs.end
    if obs.write_error and end in ("eof", "reset"):
        end = "eof|reset"  # "error taken by a write"
    return obs.got, end


def _same_end(a: str, b: str) -> bool:
    return a == b or ("eof|reset" in (a, b) and {a, b} <= {"eof", "reset", "eof|reset"})


def _held_behind_fin_and_reset(side: Side, peer: Side, p: Obs) -> bool:
    """Whether `side` only waited in a write (ALLOWED "writes held behind a FIN and a reset")."""
    return side.reader == "never" and p.write_error == "timeout" and peer.end in FIN_RESETS


def _reads_match(d: Obs, p: Obs, sender: Side, reader: str) -> bool:
    """Whether proxied reads `p` may stand for direct reads `d` (ALLOWED)."""
    got_d, end_d = _ending(d)
    got_p, end_p = _ending(p)
    if got_d == got_p and _same_end(end_d, end_p):
        return True
    reset_d = end_d in ("reset", "eof|reset")
    if reader == "client" and sender.end in RESETS and got_d == got_p == 0 and end_p == "eof":
        return reset_d  # "reset before any byte"
    # "reset cuts held bytes"
    cut = sender.end in ("rst", "close-unread") and got_p <= got_d
    return cut and reset_d and end_p in ("reset", "eof|reset")


def compare(
    scenario: Scenario, direct: Sequence[tuple[Obs, Obs]], proxied: tuple[Obs, Obs], mode: str
) -> list[Difference]:
    """Every difference between `proxied` and all of the `direct` runs not in ALLOWED."""
    found: list[Difference] = []
    writes: list[str] = []

    def differ(kind: str, what: str) -> None:
        found.append(Difference(scenario, mode, kind, what))

    for i, (name, side, peer) in enumerate(scenario.sides()):
        sender = "target" if name == "client" else "client"
        d_obs = [run[i] for run in direct]
        p = proxied[i]
        for label, obs in [("proxied", p)] + [("direct", d) for d in d_obs]:
            if obs.digest != expected_digest(sender, obs.got):
                differ("unexplained", f"{name} {label}: the {obs.got} bytes read are not the data")
        hung = "timeout" in (p.end, p.write_error)
        if hung and not any("timeout" in (d.end, d.write_error) for d in d_obs):
            if not _held_behind_fin_and_reset(side, peer, p):
                differ("unexplained", f"{name} hung: reads {p.reading()}, write {p.write_error}")
            continue
        if side.reads_to_the_end() and not any(_reads_match(d, p, peer, name) for d in d_obs):
            seen = " or ".join(sorted({d.reading() for d in d_obs}))
            differ(_kind(peer, side, d_obs, p), f"{name} read {p.reading()}; direct {seen}")
        if peer.reads_to_the_end():
            mine = (p.wrote, p.write_error)
            if not any((d.wrote, d.write_error) == mine for d in d_obs):
                seen = " or ".join(sorted({f"{d.wrote} {d.write_error or 'ok'}" for d in d_obs}))
                mine_s = f"{p.wrote} {p.write_error or 'ok'}"
                writes.append(f"{name} wrote {mine_s}; direct {seen}")
    # A write fails when the connection is reset: if the reads show why, it is that kind.
    cause = next((d.kind for d in found if d.kind in KNOWN_BUGS), "unexplained")
    for what in writes:
        differ(cause, what)
    return found


def direct_varies(direct: Sequence[tuple[Obs, Obs]], scenario: Scenario) -> bool:
    """Direct runs that disagree on what compare() compares: the scenario is not as
    deterministic as designed (counted, and the proxied run may match any of them)."""
    first = direct[0]
    for run in direct[1:]:
        for i, (name, side, peer) in enumerate(scenario.sides()):
            if side.reads_to_the_end() and not _reads_match(first[i], run[i], peer, name):
                return True
            if peer.reads_to_the_end() and (first[i].wrote, first[i].write_error) != (
                run[i].wrote,
                run[i].write_error,
            ):
                return True
    return False
