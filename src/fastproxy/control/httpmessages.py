"""What boundedhttp.py's handler sees and gives back: a Request, and a Response or a
Deferred (work for a lane's worker thread, for what may take long)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass
class Request:
    method: str
    target: str  # path and query, as sent
    headers: list[tuple[bytes, bytes]]  # names lower-cased by h11
    local: tuple[str, int] | None  # the address the client connected to; None: unix socket
    http_version: bytes = b"1.1"

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: bytes) -> bytes | None:
        """The value of a header given once; None when absent; b"" (never a valid
        value for what we read) when given more than once."""
        values = [v for n, v in self.headers if n == name]
        if not values:
            return None
        return values[0] if len(values) == 1 else b""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: Sequence[tuple[str, str]] = field(default_factory=tuple)


class Deferred(NamedTuple):
    """Work for the lane's worker thread; the response is sent when it returns."""

    lane: str
    work: Callable[[], Response]


Handler = Callable[[Request], Response | Deferred]
Privileged = Callable[[Request], bool]


def _plain(status: int, text: str) -> Response:
    return Response(status, text.encode("utf-8", "replace") + b"\n")


_BUSY_503 = _plain(503, "too many admin connections")
_GONE = _plain(500, "not sent: the client is gone")
