"""Deterministic stream contents: both ends can produce (and so check) the bytes at
any offset without keeping them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

BLOCK = 8192


def _block(seed: int, index: int) -> bytes:
    return hashlib.sha256(f"{seed}:{index}".encode()).digest() * (BLOCK // 32)


def pattern_chunks(seed: int, offset: int, count: int) -> Iterator[bytes]:
    """The stream `seed` from `offset`, `count` bytes, in chunks of at most one block."""
    end = offset + count
    while offset < end:
        index, skip = divmod(offset, BLOCK)
        chunk = _block(seed, index)[skip : skip + end - offset]
        yield chunk
        offset += len(chunk)


def pattern(seed: int, offset: int, count: int) -> bytes:
    return b"".join(pattern_chunks(seed, offset, count))


class PrefixCheck:
    """Checks that what arrives is exactly the start of stream `seed`, as it arrives."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.received = 0
        self.digest = hashlib.sha256()
        self.corrupt_at: int | None = None

    def feed(self, data: bytes) -> None:
        if self.corrupt_at is None and data != pattern(self.seed, self.received, len(data)):
            self.corrupt_at = self.received
        self.digest.update(data)
        self.received += len(data)

    def intact(self) -> bool:
        """Every byte received so far matches (its sha256 equals the pattern prefix's)."""
        expected = hashlib.sha256()
        for chunk in pattern_chunks(self.seed, 0, self.received):
            expected.update(chunk)
        return self.corrupt_at is None and expected.hexdigest() == self.digest.hexdigest()
