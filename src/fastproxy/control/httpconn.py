"""One connection of boundedhttp.py's server, as its loop keeps it (state, deadline,
buffers, h11), and a lane: the worker thread that runs Deferred work, and the jobs
waiting for it."""

from __future__ import annotations

import collections
import contextlib
import queue
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..lazymodule import lazy

if TYPE_CHECKING:
    import h11
else:
    h11 = lazy("h11")  # loaded by the first request: 18 ms off every start

from .httpmessages import _BUSY_503, Request, Response

MAX_HEADER_BYTES = 16 * 1024  # request line and headers
REQUEST_DEADLINE = 5.0  # seconds for a whole request, and for an idle keep-alive wait

# Connection states: reading a request, its handler at work, writing the response,
# draining the client before closing, closed.
_READ, _BUSY, _WRITE, _LINGER, _CLOSED = "read", "busy", "write", "linger", "closed"


class _Conn:
    __slots__ = (
        "sock",
        "http",
        "state",
        "since",
        "deadline",
        "got",
        "body",
        "request",
        "out",
        "served",
        "dropped",
        "source",
        "reserve",
        "queued",
        "unread",
        "first",
    )

    def __init__(self, sock: socket.socket, now: float, source: str) -> None:
        self.sock = sock
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.state = _READ
        self.since = now  # when the current request (or wait for one) began
        self.deadline = now + REQUEST_DEADLINE
        self.got = False  # some bytes of the current request arrived
        self.body = 0  # body bytes of the current request
        self.request: Request | None = None
        self.out = bytearray()
        self.served = 0
        self.dropped = 0  # bytes read and dropped while lingering
        self.source = source  # the client's address ("unix" for the unix socket)
        self.reserve = False  # in a reserved slot: one privileged request, then closed
        self.queued = False  # waits in _ready for its next turn
        self.unread = False  # ...and has bytes in its socket to read then
        self.first: h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED] | None = None  # at accept


_Job = tuple[_Conn, Callable[[], Response]]


class _Lane:
    """A worker thread and the jobs waiting for it: privileged ones first, the others
    per client address, and those only when the worker has rested (see _start_jobs)."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # None: stop
        self.first: collections.deque[_Job] = collections.deque()  # privileged requests
        self.waiting: dict[str, collections.deque[_Job]] = {}  # in the order served next
        self.busy = False  # a job is with the worker
        self.rests_until = 0.0  # no ordinary job before (monotonic time)

    def next_job(self, now: float) -> _Job | None:
        """A privileged job, else the oldest job of the address whose turn it is (then
        at the back) once the worker has rested."""
        while self.first:
            job = self.first.popleft()
            if job[0].state == _BUSY:  # else shed or closed meanwhile
                return job
        while self.waiting and now >= self.rests_until:
            source, jobs = next(iter(self.waiting.items()))
            job = jobs.popleft()
            del self.waiting[source]
            if jobs:
                self.waiting[source] = jobs
            if job[0].state == _BUSY:  # else shed or closed meanwhile
                return job
        return None


def request_of(conn: _Conn, event: h11.Request) -> Request:
    """The handler's view of the request h11 parsed on `conn`."""
    local = conn.sock.getsockname()
    return Request(
        event.method.decode("ascii", "replace"),
        event.target.decode("ascii", "replace"),
        list(event.headers),
        local[:2] if isinstance(local, tuple) else None,
        event.http_version,
    )


def turn_away(sock: socket.socket) -> None:
    """A 503 for a newcomer no slot can take, sent without h11, and the close."""
    body = _BUSY_503.body
    with contextlib.suppress(OSError):
        sock.send(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
    sock.close()
