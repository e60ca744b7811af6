"""A small HTTP/1.1 server whose cost has a ceiling whatever its clients do (SPEC
section 7): one thread, one selector, h11 for the protocol, at most MAX_CONNECTIONS
connections, a deadline for every request and every response, and caps on header and
body sizes. It serves the admin endpoint; what each request means is the handler's
business (admin.py).

The handler runs on the event loop and must be quick; work that may take long (a
reload, a /status of thousands of ports) comes back as a Deferred and runs on a worker
thread of its lane, so the loop keeps answering everything else (/healthz above all)
meanwhile. Each connection has at most one request in flight, and the loop hands a
lane's worker one job at a time, at the end of a turn, taking client addresses in
turn: a flood of deferred requests from one address does not queue ahead of another's,
and the worker (which needs the GIL as much as the loop) never works through a long
queue while the loop is answering.

The slots are shared out so that no client can take the endpoint from its operator
(SPEC section 12). A client address has at most MAX_PER_SOURCE of the MAX_CONNECTIONS
slots; when they are all taken, a newcomer replaces the connection that has waited
longest for its request (or for its response to be read), from its own address first,
else from the address holding the most: slow or stalled clients are shed first. When
no slot can be freed that way (every one has a request being worked on), the newcomer
gets one of RESERVE slots kept aside, where only a privileged request is served (the
handler's `privileged`: /healthz, or one carrying the admin token); anything else is
refused with a 503 as soon as its head has arrived. Every local user shares
127.0.0.1 (and can use all of 127/8), so the reserve, not the per-address share,
is what keeps /healthz and the operator's POSTs answered. Pipelining is bounded too:
one request in flight per connection, at most RECV_SIZE of the next ones read ahead,
and a connection that has had PIPELINE_SHARE answers in a row yields to the others."""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import NamedTuple

import h11

log = logging.getLogger("fastproxy")

MAX_CONNECTIONS = 64
MAX_PER_SOURCE = 16  # slots one client address (all unix-socket clients: one) may hold
RESERVE = 16  # slots beyond those for privileged requests (see the module's docstring)
RESERVE_DEADLINE = 2.0  # seconds a connection in the reserve has to send its request head
PIPELINE_SHARE = 2  # answers in a row for one connection before it yields to the others
REQUEST_DEADLINE = 5.0  # seconds for a whole request, and for an idle keep-alive wait
RESPONSE_DEADLINE = 10.0  # seconds for a client to read a response
LINGER = 1.0  # seconds to drain a client's unread bytes before closing (see _linger)
LINGER_BYTES = 64 * 1024  # ...and at most this many: a client still sending is cut off
MAX_HEADER_BYTES = 16 * 1024  # request line and headers
MAX_BODY_BYTES = 64 * 1024
MAX_REQUESTS_PER_CONNECTION = 100  # keep-alive, bounded: then "Connection: close"
BACKLOG = 4096  # a burst of connections waits in the kernel (up to net.core.somaxconn)
ACCEPT_BATCH = 16  # accepts per wake-up: fewer than MAX_CONNECTIONS, see _accept
RECV_SIZE = 16 * 1024  # with h11's own cap, at most ~32 KiB buffered per connection
ACCEPT_PAUSE = 0.1  # seconds without accepting when out of descriptors
WARN_EVERY = 10.0  # seconds between two warnings that we are out of descriptors


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
    )

    def __init__(self, sock: socket.socket, now: float, source: str, reserve: bool) -> None:
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
        self.reserve = reserve  # in a reserved slot: one privileged request, then closed
        self.queued = False  # had its share of answers: waits in _ready for its next turn
        if reserve:
            self.deadline = now + RESERVE_DEADLINE


_Job = tuple[_Conn, Callable[[], Response]]


class _Lane:
    """A worker thread and the jobs waiting for it, per client address."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # None: stop
        self.waiting: dict[str, collections.deque[_Job]] = {}  # in the order served next
        self.busy = False  # a job is with the worker

    def next_job(self) -> _Job | None:
        """The oldest job of the address whose turn it is (then at the back)."""
        while self.waiting:
            source, jobs = next(iter(self.waiting.items()))
            job = jobs.popleft()
            del self.waiting[source]
            if jobs:
                self.waiting[source] = jobs
            if job[0].state == _BUSY:  # else shed or closed meanwhile
                return job
        return None


class BoundedHTTPServer:
    def __init__(
        self,
        handler: Handler,
        sockets: Sequence[socket.socket],
        lanes: Sequence[str],
        name: str,
        privileged: Privileged = lambda request: False,
    ) -> None:
        """Serve `handler` on `sockets`, bound sockets (listening or not), TCP or unix.
        `privileged` says which requests the reserve serves (see the docstring)."""
        self.handler = handler
        self.privileged = privileged
        self.sockets = list(sockets)
        self._selector = selectors.DefaultSelector()
        for sock in self.sockets:
            sock.listen(BACKLOG)  # again on an inherited socket: raises its backlog
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, "accept")
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._conns: dict[socket.socket, _Conn] = {}
        self._per_source: collections.Counter[str] = collections.Counter()  # not the reserve
        self._reserved = 0
        self._ready: collections.deque[_Conn] = collections.deque()  # yielded, to go on
        self._done: collections.deque[tuple[_Conn, Response, _Lane]] = collections.deque()
        self._accept_paused_until = 0.0
        self._warned_at = -WARN_EVERY
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._lanes = {lane: _Lane() for lane in lanes}
        self._workers = [
            threading.Thread(target=self._work, args=(it,), name=f"{name}-{lane}", daemon=True)
            for lane, it in self._lanes.items()
        ]

    def start(self) -> None:
        for worker in self._workers:
            worker.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close every connection and the listening socket."""
        if self._stopping:
            return
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5)
        for lane in self._lanes.values():
            lane.jobs.put(None)
        for conn in list(self._conns.values()):
            self._close(conn)
        self._selector.close()
        for sock in self.sockets:
            sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- the event loop ----------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping:
            try:
                self._turn()
            except Exception as exc:  # a bug here must not end the endpoint: log, go on
                log.error("admin: unexpected error in the event loop: %r", exc)
                time.sleep(0.01)

    def _turn(self) -> None:
        for key, mask in self._selector.select(self._timeout()):
            if key.data == "accept":
                self._accept(key.fileobj)  # type: ignore[arg-type]
            elif key.data == "wake":
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            else:
                self._safely(key.data, mask)
        while self._done:
            conn, response, lane = self._done.popleft()
            lane.busy = False
            if conn.state == _BUSY:  # else it was closed by stop() or shed
                self._safely(conn, 0, response)
        # Connections that yielded go on now, each for one more share (those yielding
        # again wait for the next turn): everyone else's events came first.
        for _ in range(len(self._ready)):
            conn = self._ready.popleft()
            conn.queued = False
            if conn.state == _READ:
                self._safely(conn, 0)
        self._expire()
        for lane in self._lanes.values():
            if not lane.busy and (job := lane.next_job()) is not None:
                lane.busy = True
                lane.jobs.put(job)

    def _timeout(self) -> float:
        if self._ready:
            return 0.0
        now = time.monotonic()
        wake_at = now + 1.0
        for conn in self._conns.values():
            if conn.state != _BUSY:
                wake_at = min(wake_at, conn.deadline)
        if self._accept_paused_until:
            wake_at = min(wake_at, self._accept_paused_until)
        return max(0.0, wake_at - now)

    def _safely(self, conn: _Conn, mask: int, response: Response | None = None) -> None:
        """Advance one connection; whatever goes wrong costs that connection only."""
        try:
            if response is not None:
                self._respond(conn, response)
            elif conn.state == _LINGER:
                self._linger(conn)
                return
            elif conn.state == _READ and mask & selectors.EVENT_READ:
                if conn.queued:  # goes on in its turn; reading more now would buffer more
                    return
                if not self._receive(conn):
                    return
            self._advance(conn)
        except Exception as exc:
            log.error("admin: dropped a connection after an unexpected error: %r", exc)
            self._close(conn)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            os.write(self._wake_w, b"!")

    # -- connections -------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        # A bounded batch: a connection accepted now is read (below, or on the next
        # wake-up) before MAX_CONNECTIONS newer ones can push it out.
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Pending clients wait in the backlog; retried in a moment.
                    now = time.monotonic()
                    if now - self._warned_at >= WARN_EVERY:
                        self._warned_at = now
                        log.warning("admin: cannot accept: %s; retrying shortly", exc.strerror)
                    for sock in self.sockets:
                        self._selector.unregister(sock)
                    self._accept_paused_until = now + ACCEPT_PAUSE
                    return
                continue  # ECONNABORTED and the like: that client is gone
            sock.setblocking(False)
            source = peer[0] if sock.family != socket.AF_UNIX else "unix"
            reserve = self._admit(source)
            if reserve is None:
                self._turn_away(sock)
                continue
            conn = _Conn(sock, time.monotonic(), source, reserve)
            self._conns[sock] = conn
            if reserve:
                self._reserved += 1
            else:
                self._per_source[source] += 1
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self._safely(conn, selectors.EVENT_READ)  # the request is often there already

    def _admit(self, source: str) -> bool | None:
        """Make room for a newcomer from `source`: False for an ordinary slot, True
        for a reserved one, None when there is none (every slot is at work)."""
        general = len(self._conns) - self._reserved
        if self._per_source[source] >= MAX_PER_SOURCE:
            if self._shed(lambda c: not c.reserve and c.source == source):
                return False
        elif general < MAX_CONNECTIONS or self._shed(lambda c: not c.reserve, crowded=True):
            return False
        if self._reserved < RESERVE or self._shed(lambda c: c.reserve):
            return True
        return None

    def _shed(self, among: Callable[[_Conn], bool], crowded: bool = False) -> bool:
        """Close the connection (of those `among`) that has waited longest without
        being served; `crowded`: from the address holding the most slots first."""
        waiting = [c for c in self._conns.values() if c.state != _BUSY and among(c)]
        if not waiting:
            return False
        count = self._per_source
        if crowded:
            victim = min(waiting, key=lambda c: (-count[c.source], c.since))
        else:
            victim = min(waiting, key=lambda c: c.since)
        self._close(victim)
        return True

    @staticmethod
    def _turn_away(sock: socket.socket) -> None:
        body = _BUSY_503.body
        with contextlib.suppress(OSError):
            sock.send(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
        sock.close()

    def _expire(self) -> None:
        now = time.monotonic()
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            for sock in self.sockets:
                self._selector.register(sock, selectors.EVENT_READ, "accept")
        for conn in list(self._conns.values()):
            if conn.state == _BUSY or now < conn.deadline:
                continue
            if conn.state == _READ and conn.got:
                self._safely(conn, 0, _plain(408, "the request took too long"))
            else:  # idle keep-alive, a response nobody reads, or done lingering
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock, None) is not None:
            self._watch(conn, 0)
            if conn.reserve:
                self._reserved -= 1
            else:
                self._per_source[conn.source] -= 1
                if not self._per_source[conn.source]:
                    del self._per_source[conn.source]
        conn.state = _CLOSED  # nothing more is done for it, even by a late worker
        conn.sock.close()

    def _watch(self, conn: _Conn, events: int) -> None:
        registered = conn.sock in self._selector.get_map()
        if not events:
            if registered:
                self._selector.unregister(conn.sock)
        elif registered:
            self._selector.modify(conn.sock, events, conn)
        else:
            self._selector.register(conn.sock, events, conn)

    # -- reading requests --------------------------------------------------------

    def _receive(self, conn: _Conn) -> bool:
        """Hand what arrived to the parser; False when there was nothing."""
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self._close(conn)
            return False
        if data:
            conn.got = True
        conn.http.receive_data(data)  # b"": the client closed its side
        return True

    def _advance(self, conn: _Conn) -> None:
        """Parse what has arrived, answer each complete request, send the answers.
        A loop, not recursion: one read may hold many pipelined requests. After
        PIPELINE_SHARE of them the connection yields: the rest wait for the next turn
        of the loop, after every other connection's (and reads from it stop meanwhile:
        what it has sent ahead stays bounded)."""
        answered = conn.served
        while True:
            if conn.state == _WRITE:
                if not self._flush(conn):
                    return
                continue
            if conn.state != _READ:
                return
            if conn.served - answered >= PIPELINE_SHARE:
                conn.queued = True
                self._ready.append(conn)
                return
            try:
                event = conn.http.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
                self._respond(conn, _plain(status, str(exc) or HTTPStatus(status).phrase))
                continue
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                # h11 caps only a head still incomplete; one that arrived whole in a
                # read or two is measured here.
                head = len(event.method) + len(event.target) + 12
                head += sum(len(name) + len(value) + 4 for name, value in event.headers)
                if head > MAX_HEADER_BYTES:
                    self._respond(conn, _HEAD_TOO_LARGE)
                    continue
                local = conn.sock.getsockname()
                conn.request = Request(
                    event.method.decode("ascii", "replace"),
                    event.target.decode("ascii", "replace"),
                    list(event.headers),
                    local[:2] if isinstance(local, tuple) else None,
                    event.http_version,
                )
                if conn.reserve and not self.privileged(conn.request):
                    self._respond(conn, _BUSY_503)
                    continue
                # h11 checked it is digits (at most 20); refuse before reading a byte
                length = conn.request.header(b"content-length")
                if length and int(length) > MAX_BODY_BYTES:
                    self._respond(conn, _TOO_LARGE)
            elif isinstance(event, h11.Data):
                conn.body += len(event.data)
                if conn.body > MAX_BODY_BYTES:
                    self._respond(conn, _TOO_LARGE)
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch(conn)
            else:  # ConnectionClosed (or PAUSED, which cannot happen while reading)
                self._close(conn)
                return

    def _dispatch(self, conn: _Conn) -> None:
        assert conn.request is not None
        try:
            result = self.handler(conn.request)
        except Exception as exc:
            log.error("admin: %s %s failed: %r", conn.request.method, conn.request.path, exc)
            result = _plain(500, "internal error")
        if isinstance(result, Deferred):
            conn.state = _BUSY
            self._watch(conn, 0)
            waiting = self._lanes[result.lane].waiting
            waiting.setdefault(conn.source, collections.deque()).append((conn, result.work))
        else:
            self._respond(conn, result)

    def _work(self, lane: _Lane) -> None:
        while (job := lane.jobs.get()) is not None:
            conn, work = job
            try:
                # shed or gone since it was handed over: nobody to answer
                response = _GONE if conn.state == _CLOSED else work()
            except Exception as exc:  # the worker lives on; the client hears of it
                log.error("admin: request failed: %r", exc)
                response = _plain(500, "internal error")
            self._done.append((conn, response, lane))  # always: the lane is free again
            self._wake()

    # -- writing responses -------------------------------------------------------

    def _respond(self, conn: _Conn, response: Response) -> None:
        http = conn.http
        if http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self._close(conn)
            return
        conn.served += 1
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
        ]
        # Close after an error before the request was whole (its rest is unread), at
        # the keep-alive bound, in a reserved slot, and when stopping.
        if (
            (response.status >= 400 and http.their_state is not h11.DONE)
            or conn.served >= MAX_REQUESTS_PER_CONNECTION
            or conn.reserve
            or self._stopping
        ):
            headers.append(("Connection", "close"))
        try:
            reason = HTTPStatus(response.status).phrase
            out = http.send(
                h11.Response(status_code=response.status, headers=headers, reason=reason)
            )
            if conn.request is None or conn.request.method != "HEAD":
                out += http.send(h11.Data(data=response.body))
            out += http.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self._close(conn)
            return
        conn.out += out
        conn.state = _WRITE
        conn.since = time.monotonic()
        conn.deadline = conn.since + RESPONSE_DEADLINE

    def _flush(self, conn: _Conn) -> bool:
        """Send what we can; True when the response is out and the connection
        reads the next request."""
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the client went away mid-response
            self._close(conn)
            return False
        del conn.out[:sent]
        if conn.out:
            self._watch(conn, selectors.EVENT_WRITE)
            return False
        http = conn.http
        if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
            self._start_lingering(conn)
            return False
        http.start_next_cycle()
        conn.state = _READ
        conn.request = None
        conn.got = bool(http.trailing_data[0])  # pipelined bytes already received
        conn.body = 0
        conn.since = time.monotonic()
        conn.deadline = conn.since + REQUEST_DEADLINE
        self._watch(conn, selectors.EVENT_READ)
        return True

    def _start_lingering(self, conn: _Conn) -> None:
        """Closing with unread bytes in the socket sends a reset, which can destroy
        the response before the client reads it: send our FIN, then read and drop
        what the client still sends, for a moment, before closing."""
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        conn.state = _LINGER
        conn.deadline = time.monotonic() + LINGER
        self._watch(conn, selectors.EVENT_READ)

    def _linger(self, conn: _Conn) -> None:
        try:
            conn.dropped += len(data := conn.sock.recv(RECV_SIZE))
            if data and conn.dropped <= LINGER_BYTES:
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close(conn)


def _plain(status: int, text: str) -> Response:
    return Response(status, text.encode("utf-8", "replace") + b"\n")


_BUSY_503 = _plain(503, "too many admin connections")
_GONE = _plain(500, "not sent: the client is gone")
_TOO_LARGE = _plain(413, f"bodies are limited to {MAX_BODY_BYTES} bytes")
_HEAD_TOO_LARGE = _plain(431, f"request line and headers are limited to {MAX_HEADER_BYTES} bytes")
