"""Scenarios: what each end of one TCP connection does, generated from a seed.

A scenario prints as a one-line reproducer, e.g.
    seed=7 client[fast: w300000 u w50000 fin] target[slow/50: fin-rst]
Acts: `w<n>` writes n data bytes, `u` sends one urgent byte (MSG_OOB), `p<ms>` pauses.
Ends (the last thing a side does; see endpoint.py):
    fin               shutdown(SHUT_WR), read on to the peer's end, close
    rst               wait until its bytes are acknowledged, close with SO_LINGER 0
    fin-rst           shutdown(SHUT_WR), wait until acknowledged (FIN too), SO_LINGER 0
    close-unread      (never-reader) acknowledged, then close() with unread bytes: a reset
    fin-close-unread  (never-reader) shutdown first, then the same: a reset after a FIN
Readers: `fast` (1 MiB reads), `slow/<ms>` (SO_RCVBUF 4096, 4 KiB reads spaced by ms),
`never` (never reads)."""

from __future__ import annotations

import random
from dataclasses import dataclass

ENDS_READING = ("fin", "rst", "fin-rst")
ENDS_NEVER = ("rst", "fin-rst", "close-unread", "fin-close-unread")
FIN_FIRST = ("fin", "fin-rst", "fin-close-unread")  # ends that send a FIN before anything else
RESETS = ("rst", "fin-rst", "close-unread", "fin-close-unread")

# Writes toward a slow reader stay small enough for it to finish in a few seconds.
SLOW_READER_BUDGET = 320 << 10


@dataclass(frozen=True)
class Side:
    reader: str  # "fast" | "slow" | "never"
    acts: tuple[str, ...]
    end: str
    slow_ms: int = 0

    def data_bytes(self) -> int:
        return sum(int(a[1:]) for a in self.acts if a[0] == "w")

    def urgent(self) -> bool:
        return "u" in self.acts

    def reads_to_the_end(self) -> bool:
        """It reads until the peer's end (so what it read is comparable)."""
        return self.reader != "never" and self.end == "fin"

    def __str__(self) -> str:
        reader = f"slow/{self.slow_ms}" if self.reader == "slow" else self.reader
        return f"{reader}: {' '.join((*self.acts, self.end))}"


@dataclass(frozen=True)
class Scenario:
    seed: int
    client: Side
    target: Side

    def __str__(self) -> str:
        return f"seed={self.seed} client[{self.client}] target[{self.target}]"

    def sides(self) -> tuple[tuple[str, Side, Side], ...]:
        """(name, side, its peer) for both ends."""
        return (("client", self.client, self.target), ("target", self.target, self.client))


def _size(rng: random.Random, cap: int) -> int:
    low, high = rng.choices(
        [(0, 0), (1, 100), (101, 64 << 10), (64 << 10, 1 << 20), (1 << 20, 4 << 20)],
        weights=[8, 30, 30, 22, 10],
    )[0]
    return min(rng.randint(low, high), cap)


def _side(rng: random.Random, reader: str, peer_reader: str) -> Side:
    budget = SLOW_READER_BUDGET if peer_reader == "slow" else 1 << 30
    acts: list[str] = []
    for _ in range(rng.choice([0, 1, 1, 2, 3, 4, 6])):
        kind = rng.choices("wup", weights=[55, 25, 20])[0]
        if kind == "w":
            n = _size(rng, budget)
            budget -= n
            acts.append(f"w{n}")
        elif kind == "u":
            acts.append("u")
        else:
            acts.append(f"p{rng.choice([1, 10, 50])}")
    if reader == "never":
        end = rng.choice(ENDS_NEVER)
    else:
        end = rng.choices(ENDS_READING, weights=[55, 15, 30])[0]
    slow_ms = rng.choice([1, 10, 50]) if reader == "slow" else 0
    return Side(reader, tuple(acts), end, slow_ms)


def generate(seed: int) -> Scenario:
    rng = random.Random(seed)
    readers = rng.choices(["fast", "slow", "never"], weights=[65, 22, 13], k=2)
    if readers == ["never", "never"]:
        readers[rng.randrange(2)] = "fast"
    client = _side(rng, readers[0], readers[1])
    target = _side(rng, readers[1], readers[0])
    # Closing with unread bytes resets only if bytes come: without any, a plain reset.
    if client.end.endswith("close-unread") and target.data_bytes() == 0:
        client = Side(client.reader, client.acts, client.end.replace("close-unread", "rst"))
    if target.end.endswith("close-unread") and client.data_bytes() == 0:
        target = Side(target.reader, target.acts, target.end.replace("close-unread", "rst"))
    return Scenario(seed, client, target)
