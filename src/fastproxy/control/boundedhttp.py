"""A small HTTP/1.1 server whose cost has a ceiling whatever its clients do (SPEC
section 7): one thread, one selector, h11 for the protocol, at most MAX_CONNECTIONS
connections, a deadline for every request and every response, and caps on header and
body sizes. It serves the admin endpoint; what each request means is the handler's
business (admin.py).

The handler runs on the event loop and must be quick; work that may take long (a
reload, a /status of thousands of ports) comes back as a Deferred and runs on a worker
thread of its lane, so the loop keeps answering everything else (/healthz above all)
meanwhile. Each connection has at most one request in flight. The loop hands a lane's
worker one job at a time: the handler's `privileged` ones first, the others client
address by client address, each after the worker has rested LANE_REST_FACTOR times as
long as its last ordinary job took. The worker needs the GIL as much as the loop
does, and on a loaded machine a thread preempted while holding it stalls the other:
a flood of deferred reads must not be able to take the loop's time.

The slots are shared out so that no client can take the endpoint from its operator
(SPEC section 12). A newcomer's first bytes are read as it is accepted. A privileged
request (/healthz, one carrying the admin token, anything over the unix socket) is
always served: in an ordinary slot if there is one, else in one of RESERVE slots kept
aside (one request, then the connection closes). Every local user shares 127.0.0.1
(and can use all of 127/8), so it is the reserve, not the per-address share, that
keeps /healthz and the operator's POSTs answered. Anyone else gets an ordinary slot:
a client address holds at most MAX_PER_SOURCE of the MAX_CONNECTIONS; when none is
free, the newcomer replaces the connection that has waited longest for its request
(or for its response to be read), stalled half-way through a request before silent,
from its own address first, else from the address holding the most. When nothing can
be closed (every slot has a request being worked on), an ordinary request gets a
503, and a newcomer that has not sent its request yet gets a reserved slot on
probation (RESERVE_DEADLINE for its head, which must be privileged).

Pipelining is bounded: one request in flight per connection, at most RECV_SIZE of
the next ones read ahead, and a connection that has had PIPELINE_SHARE answers in a
row yields to the others. Each turn of the loop accepts first and then gives at most
TURN_ANSWERS answers (the other connections wait for the next turn, in order):
however many clients pipeline, a newcomer waits about one such turn at most."""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus

from .httpconn import (
    _BUSY,
    _CLOSED,
    _LINGER,
    _READ,
    _WRITE,
    MAX_HEADER_BYTES,
    REQUEST_DEADLINE,
    _Conn,
    _Lane,
    h11,
    request_of,
    turn_away,
)
from .httpmessages import _BUSY_503, _GONE, Deferred, Handler, Privileged, Request, Response, _plain

log = logging.getLogger("fastproxy")

MAX_CONNECTIONS = 64
MAX_PER_SOURCE = 16  # slots one client address (all unix-socket clients: one) may hold
RESERVE = 16  # slots beyond those for privileged requests (see the module's docstring)
RESERVE_DEADLINE = 2.0  # seconds a connection in the reserve has to send its request head
PIPELINE_SHARE = 2  # answers in a row for one connection before it yields to the others
TURN_ANSWERS = 16  # answers per turn of the loop; the rest wait for the next (new ones first)
LANE_REST, LANE_REST_FACTOR = 0.01, 4  # a worker's rest after an ordinary job (see _turn)
RESPONSE_DEADLINE = 10.0  # seconds for a client to read a response
LINGER = 1.0  # seconds to drain a client's unread bytes before closing (see _linger)
LINGER_BYTES = 64 * 1024  # ...and at most this many: a client still sending is cut off
MAX_BODY_BYTES = 64 * 1024
MAX_REQUESTS_PER_CONNECTION = 100  # keep-alive, bounded: then "Connection: close"
BACKLOG = 4096  # a burst of connections waits in the kernel (up to net.core.somaxconn)
EXPIRE_EVERY = 0.05  # seconds between two looks at the deadlines
ACCEPT_BATCH = 16  # accepts per listening socket and turn (see _accept)
RECV_SIZE = 16 * 1024  # with h11's own cap, at most ~32 KiB buffered per connection
ACCEPT_PAUSE = 0.1  # seconds without accepting when out of descriptors
WARN_EVERY = 10.0  # seconds between two warnings that we are out of descriptors


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
        self._ready: collections.deque[_Conn] = collections.deque()  # to go on, in order
        self._answers = 0  # answers given in this turn
        self._expire_at = 0.0  # when _expire next looks at the deadlines
        self._done: collections.deque[tuple[_Conn, Response, _Lane, float]] = collections.deque()
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
        self._answers = 0
        events = self._selector.select(self._timeout())
        # New connections first: a probe waits behind no one's pipelined requests.
        for key, _ in events:
            if key.data == "accept":
                self._accept(key.fileobj)  # type: ignore[arg-type]
        while self._done:
            conn, response, lane, took = self._done.popleft()
            lane.busy = False
            # The worker needs the GIL as much as the loop does: after an ordinary
            # job it rests LANE_REST_FACTOR times as long (at least LANE_REST), so
            # that a flood of deferred reads cannot slow the loop by more than a
            # little (privileged jobs do not wait).
            lane.rests_until = time.monotonic() + max(LANE_REST, LANE_REST_FACTOR * took)
            if conn.state == _BUSY:  # else it was closed by stop() or shed
                self._safely(conn, 0, response)
        # Then those that waited from an earlier turn, in order, then this turn's; past
        # TURN_ANSWERS, whoever has a request to read waits for the next turn.
        for _ in range(len(self._ready)):
            if self._answers >= TURN_ANSWERS:
                break
            conn = self._ready.popleft()
            conn.queued = False
            if conn.state == _READ:
                self._safely(conn, selectors.EVENT_READ if conn.unread else 0)
        for key, mask in events:
            if key.data == "wake":
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            elif key.data != "accept":
                conn = key.data
                if (
                    self._answers >= TURN_ANSWERS
                    and conn.state == _READ
                    and mask & selectors.EVENT_READ
                    and not conn.queued
                ):
                    conn.queued = conn.unread = True
                    self._ready.append(conn)
                else:
                    self._safely(conn, mask)
        self._expire()
        now = time.monotonic()
        for lane in self._lanes.values():
            if not lane.busy and (job := lane.next_job(now)) is not None:
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
        for lane in self._lanes.values():
            if lane.waiting and not lane.busy:
                wake_at = min(wake_at, lane.rests_until)
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
                if not self._receive(conn) and not conn.unread:
                    return
                conn.unread = False
            self._advance(conn)
        except Exception as exc:
            log.error("admin: dropped a connection after an unexpected error: %r", exc)
            self._close(conn)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            os.write(self._wake_w, b"!")

    # -- connections -------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        # A bounded batch, read as it is accepted: a newcomer whose request came with
        # it is placed by what it asks; one that is still silent is shed only after
        # those stalled part-way through theirs (see _shed).
        if self._accept_paused_until:  # out of descriptors (below), for every socket
            return
        try:
            h11.Connection  # noqa: B018  the first request loads h11 (lazymodule.py)
        except OSError as exc:  # out of descriptors to read its files: as below
            self._pause_accepting("cannot load h11", exc)
            return
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting("cannot accept", exc)
                    return
                continue  # ECONNABORTED and the like: that client is gone
            sock.setblocking(False)
            source = peer[0] if sock.family != socket.AF_UNIX else "unix"
            conn = _Conn(sock, time.monotonic(), source)
            # The request is often there already: what it is decides where it goes.
            try:
                head = self._first_head(conn)
            except Exception as exc:
                log.error("admin: dropped a connection after an unexpected error: %r", exc)
                head = None
                conn.state = _CLOSED
            if conn.state == _CLOSED:
                sock.close()
                continue
            privileged = head is not None and self.privileged(head)
            reserve = self._admit(source, privileged, head is not None)
            if reserve is None:
                turn_away(sock)
                continue
            conn.reserve = reserve
            if reserve:
                self._reserved += 1
                conn.deadline = conn.since + RESERVE_DEADLINE
            else:
                self._per_source[source] += 1
            self._conns[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self._safely(conn, 0)

    def _pause_accepting(self, what: str, exc: OSError) -> None:
        # Pending clients wait in the backlog; accepting resumes in a moment (_expire).
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("admin: %s: %s; retrying shortly", what, exc.strerror or exc)
        for listening in self.sockets:
            self._selector.unregister(listening)
        self._accept_paused_until = now + ACCEPT_PAUSE

    def _first_head(self, conn: _Conn) -> Request | None:
        """Read what a newcomer sent; its request when the head is whole (the event is
        kept for _advance)."""
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            conn.state = _CLOSED
            return None
        conn.got = bool(data)
        conn.http.receive_data(data)
        try:
            event = conn.http.next_event()
        except h11.RemoteProtocolError:
            return None  # raised again, and answered, in _advance
        if event is h11.NEED_DATA:
            return None
        conn.first = event
        return request_of(conn, event) if isinstance(event, h11.Request) else None

    def _admit(self, source: str, privileged: bool, known: bool) -> bool | None:
        """Make room for a newcomer from `source` whose request is `privileged`, or
        not, or not `known` yet (its head is still to come): False for an ordinary
        slot, True for a reserved one, None when there is none for it."""
        general = len(self._conns) - self._reserved
        if self._per_source[source] < MAX_PER_SOURCE and general < MAX_CONNECTIONS:
            return False
        if privileged:  # served, whatever holds the other slots
            if self._reserved >= RESERVE:
                self._shed(lambda c: c.reserve)  # if all are at work: one more, briefly
            return True
        if self._per_source[source] >= MAX_PER_SOURCE:
            if self._shed(lambda c: not c.reserve and c.source == source):
                return False
        elif self._shed(lambda c: not c.reserve, crowded=True):
            return False
        if known:  # an ordinary request: a reserved slot would not serve it
            return None
        if self._reserved < RESERVE or self._shed(lambda c: c.reserve):
            return True
        return None

    def _shed(self, among: Callable[[_Conn], bool], crowded: bool = False) -> bool:
        """Close the connection (of those `among`) that has waited longest without
        being served; `crowded`: from the address holding the most slots first."""
        count = self._per_source
        spared: set[int] = set()
        while True:
            waiting = [
                c
                for c in self._conns.values()
                if c.state != _BUSY and among(c) and id(c) not in spared
            ]
            if not waiting:
                return False
            # Stalled part-way through a request before silent (a newcomer that has not
            # spoken yet may be the operator, held up), the longest waiting first.
            if crowded:
                victim = min(waiting, key=lambda c: (-count[c.source], not c.got, c.since))
            else:
                victim = min(waiting, key=lambda c: (not c.got, c.since))
            if victim.got or victim.state != _READ or self._still_silent(victim):
                break
            if victim.state == _CLOSED:  # it had hung up: its slot is free now
                return True
            spared.add(id(victim))  # it spoke after all: answered, or now stalled
        self._close(victim)
        return True

    def _still_silent(self, conn: _Conn) -> bool:
        """Read a silent connection before it is shed: whether it still is silent.
        Accepts come first in a turn, so a probe's request may be waiting, unread,
        when newcomers crowd its address (its client, on a busy machine, was held up
        a moment between its connect and its send)."""
        served = conn.served
        self._safely(conn, selectors.EVENT_READ)
        return conn.state == _READ and not conn.got and conn.served == served

    def _expire(self) -> None:
        now = time.monotonic()
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            for sock in self.sockets:
                self._selector.register(sock, selectors.EVENT_READ, "accept")
        # Deadlines are seconds long: a look every EXPIRE_EVERY is enough, and turns
        # that follow each other closely (a busy endpoint) skip the walk over all.
        if now < self._expire_at:
            return
        self._expire_at = now + EXPIRE_EVERY
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
            if conn.served - answered >= PIPELINE_SHARE or (
                self._answers >= TURN_ANSWERS and conn.served > answered
            ):
                conn.queued = True
                self._ready.append(conn)
                return
            try:
                event, conn.first = conn.first or conn.http.next_event(), None
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
                conn.request = request_of(conn, event)
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
        if conn.request.http_version not in (b"1.0", b"1.1"):
            self._respond(conn, _plain(400, "HTTP/1.0 or 1.1 only"))  # junk gets a 4xx
            return
        try:
            result = self.handler(conn.request)
        except Exception as exc:
            log.error("admin: %s %s failed: %r", conn.request.method, conn.request.path, exc)
            result = _plain(500, "internal error")
        if isinstance(result, Deferred):
            conn.state = _BUSY
            self._watch(conn, 0)
            lane = self._lanes[result.lane]
            if self.privileged(conn.request):
                lane.first.append((conn, result.work))
            else:
                waiting = lane.waiting
                waiting.setdefault(conn.source, collections.deque()).append((conn, result.work))
        else:
            self._respond(conn, result)

    def _work(self, lane: _Lane) -> None:
        while (job := lane.jobs.get()) is not None:
            conn, work = job
            started = time.monotonic()
            try:
                # shed or gone since it was handed over: nobody to answer
                response = _GONE if conn.state == _CLOSED else work()
            except Exception as exc:  # the worker lives on; the client hears of it
                log.error("admin: request failed: %r", exc)
                response = _plain(500, "internal error")
            took = time.monotonic() - started
            self._done.append((conn, response, lane, took))  # always: the lane is free again
            self._wake()

    # -- writing responses -------------------------------------------------------

    def _respond(self, conn: _Conn, response: Response) -> None:
        http = conn.http
        if http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self._close(conn)
            return
        conn.served += 1
        self._answers += 1
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


_TOO_LARGE = _plain(413, f"bodies are limited to {MAX_BODY_BYTES} bytes")
_HEAD_TOO_LARGE = _plain(431, f"request line and headers are limited to {MAX_HEADER_BYTES} bytes")
