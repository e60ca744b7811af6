"""A small HTTP/1.1 server whose cost has a ceiling whatever its clients do (SPEC
section 7): one thread, one selector, h11 for the protocol, at most MAX_CONNECTIONS
connections, a deadline for every request and every response, and caps on header and
body sizes. It serves the admin endpoint; what each request means is the handler's
business (admin.py).

The handler runs on the event loop and must be quick; work that may take long (a
reload, a /status of thousands of ports) comes back as a Deferred and runs on a worker
thread of its lane, so the loop keeps answering everything else (/healthz above all)
meanwhile. Each connection has at most one request in flight, so a lane's queue never
holds more than MAX_CONNECTIONS jobs.

When every slot is taken, a new connection replaces the connection that has been
waiting longest for its request (or for its response to be read): slow or stalled
clients are shed first and a prompt client is always served. Only when every slot has
a request being worked on is the newcomer turned away (503)."""

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
    local: tuple[str, int]  # the address the client connected to

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
    )

    def __init__(self, sock: socket.socket, now: float) -> None:
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


_Jobs = queue.SimpleQueue[tuple[_Conn, Callable[[], Response]] | None]  # None: stop


class BoundedHTTPServer:
    def __init__(
        self,
        handler: Handler,
        sock: socket.socket,
        lanes: Sequence[str],
        name: str,
    ) -> None:
        """Serve `handler` on `sock`, a bound socket (listening or not)."""
        self.handler = handler
        self.socket = sock
        sock.listen(BACKLOG)  # again on an inherited socket: raises its backlog
        sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(sock, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._conns: dict[socket.socket, _Conn] = {}
        self._done: collections.deque[tuple[_Conn, Response]] = collections.deque()
        self._accept_paused_until = 0.0
        self._warned_at = -WARN_EVERY
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._jobs: dict[str, _Jobs] = {lane: queue.SimpleQueue() for lane in lanes}
        self._workers = [
            threading.Thread(target=self._work, args=(jobs,), name=f"{name}-{lane}", daemon=True)
            for lane, jobs in self._jobs.items()
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
        for jobs in self._jobs.values():
            jobs.put(None)
        for conn in list(self._conns.values()):
            self._close(conn)
        self._selector.close()
        self.socket.close()
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
                self._accept()
            elif key.data == "wake":
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            else:
                self._safely(key.data, mask)
        while self._done:
            conn, response = self._done.popleft()
            if conn.state == _BUSY:  # else it was closed by stop()
                self._safely(conn, 0, response)
        self._expire()

    def _timeout(self) -> float:
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
            elif conn.state == _READ and mask & selectors.EVENT_READ and not self._receive(conn):
                return
            self._advance(conn)
        except Exception as exc:
            log.error("admin: dropped a connection after an unexpected error: %r", exc)
            self._close(conn)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            os.write(self._wake_w, b"!")

    # -- connections -------------------------------------------------------------

    def _accept(self) -> None:
        # A bounded batch: a connection accepted now is read (below, or on the next
        # wake-up) before MAX_CONNECTIONS newer ones can push it out.
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Pending clients wait in the backlog; retried in a moment.
                    now = time.monotonic()
                    if now - self._warned_at >= WARN_EVERY:
                        self._warned_at = now
                        log.warning("admin: cannot accept: %s; retrying shortly", exc.strerror)
                    self._selector.unregister(self.socket)
                    self._accept_paused_until = now + ACCEPT_PAUSE
                    return
                continue  # ECONNABORTED and the like: that client is gone
            sock.setblocking(False)
            if len(self._conns) >= MAX_CONNECTIONS and not self._shed():
                self._turn_away(sock)
                continue
            conn = _Conn(sock, time.monotonic())
            self._conns[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self._safely(conn, selectors.EVENT_READ)  # the request is often there already

    def _shed(self) -> bool:
        """Close the connection that has waited longest without being served."""
        waiting = [c for c in self._conns.values() if c.state != _BUSY]
        if not waiting:
            return False
        self._close(min(waiting, key=lambda c: c.since))
        return True

    @staticmethod
    def _turn_away(sock: socket.socket) -> None:
        body = b"too many admin connections\n"
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
            self._selector.register(self.socket, selectors.EVENT_READ, "accept")
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
        A loop, not recursion: one read may hold many pipelined requests (and the
        keep-alive bound ends it)."""
        while True:
            if conn.state == _WRITE:
                if not self._flush(conn):
                    return
                continue
            if conn.state != _READ:
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
                conn.request = Request(
                    event.method.decode("ascii", "replace"),
                    event.target.decode("ascii", "replace"),
                    list(event.headers),
                    conn.sock.getsockname()[:2],
                )
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
            self._jobs[result.lane].put((conn, result.work))
        else:
            self._respond(conn, result)

    def _work(self, jobs: _Jobs) -> None:
        while (job := jobs.get()) is not None:
            conn, work = job
            try:
                response = work()
            except Exception as exc:  # the worker lives on; the client hears of it
                log.error("admin: request failed: %r", exc)
                response = _plain(500, "internal error")
            self._done.append((conn, response))
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
        # the keep-alive bound, and when stopping.
        if (
            (response.status >= 400 and http.their_state is not h11.DONE)
            or conn.served >= MAX_REQUESTS_PER_CONNECTION
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


_TOO_LARGE = _plain(413, f"bodies are limited to {MAX_BODY_BYTES} bytes")
_HEAD_TOO_LARGE = _plain(431, f"request line and headers are limited to {MAX_HEADER_BYTES} bytes")
