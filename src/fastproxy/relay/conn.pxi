# One proxied connection: connect to a target with failover, then move bytes both
# ways until both directions have carried their FIN, or one side resets.
#
# Sockets are registered edge-triggered once, for reading and writing; readiness is
# remembered in fp_side and cleared only on EAGAIN, so the steady state costs no
# epoll_ctl at all.

cdef enum:
    EV_READ = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI
    EV_WRITE = EPOLLOUT | EPOLLHUP | EPOLLERR
    SIDE_EVENTS = EPOLLIN | EPOLLPRI | EPOLLOUT | EPOLLRDHUP | EPOLLET
    BOUNCE_SIZE = 4096

cdef enum PumpResult:
    PUMP_OK = 0
    PUMP_SRC_FAILED = 1     # reading the source failed (it was reset)
    PUMP_DST_FAILED = 2     # writing the destination failed (it was reset)


cdef inline int64_t monotonic_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef inline int64_t monotonic_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)     # vDSO: no syscall
    return <int64_t>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


# Upper bounds of the connect-time histogram's buckets (Prometheus "le"), microseconds.
cdef int64_t[15] CONNECT_BUCKETS_US = [
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000, 2500000, 5000000,
]


cdef inline void count_connect_time(fp_stats* st, int64_t us) noexcept nogil:
    cdef int i = 0
    while i < 15 and us > CONNECT_BUCKETS_US[i]:
        i += 1
    fp_add_u64(&st.connect_buckets[i], 1)
    fp_add_u64(&st.connect_us, <uint64_t>us if us > 0 else 0)


cdef int register_side(fp_worker* w, fp_side* s) noexcept nogil:
    cdef epoll_event ev
    ev.events = SIDE_EVENTS
    ev.data.ptr = s
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, s.fd, &ev) < 0:
        return -errno
    return 0


cdef void side_mute(fp_worker* w, fp_side* s, bint mute) noexcept nogil:
    """Stop (or resume) waking up for a source whose channel is full and whose
    destination cannot take more: each new segment would wake us for nothing, and
    on a busy host those wake-ups cost more than the bytes. Re-arming with
    EPOLL_CTL_MOD reports data that arrived meanwhile."""
    cdef epoll_event ev
    if s.muted == mute or s.fd < 0:
        return
    # EPOLLPRI goes too: data arrival wakes with IN|PRI, so keeping PRI would
    # keep every wake-up muting is meant to save.
    ev.events = (SIDE_EVENTS & ~(EPOLLIN | EPOLLPRI)) if mute else SIDE_EVENTS
    ev.data.ptr = s
    if epoll_ctl(w.epfd, EPOLL_CTL_MOD, s.fd, &ev) == 0:
        s.muted = mute
        if mute and s.mark == MARK_NONE:
            s.mark = MARK_UNSEEN


cdef void set_reset_on_close(int fd) noexcept nogil:
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
    cdef linger lg
    lg.l_onoff = 1
    lg.l_linger = 0
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))


# -- moving bytes -----------------------------------------------------------------

cdef inline ssize_t chan_fill(fp_relay* r, fp_chan* c, fp_side* src) noexcept nogil:
    """Read from src into the channel's pipe or buffer: >0 bytes, 0 EOF, -errno."""
    cdef ssize_t n
    if src.ssl != NULL and not src.ktls & KTLS_RX:
        return tls_recv(src, c.buf + c.off + c.len, c.buf_size - c.off - c.len)
    if c.piped:
        n = splice(src.fd, NULL, c.pipe_w, NULL, r.chan_cap - c.len,
                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
    else:
        n = recv(src.fd, c.buf + c.off + c.len, c.buf_size - c.off - c.len, 0)
    if n < 0:
        return ktls_read_error(src, errno)
    return n


cdef inline ssize_t chan_drain(fp_relay* r, fp_chan* c, fp_side* dst) noexcept nogil:
    """Write held bytes to dst: >0 bytes, -errno. No MSG_MORE/SPLICE_F_MORE: it
    corks the socket for up to 200 ms when no more data follows, and we cannot
    know that it will."""
    cdef ssize_t n
    if dst.ssl != NULL and not dst.ktls & KTLS_TX:
        n = tls_send(dst, c.buf + c.off, c.len)
        if n > 0:
            c.off += n
        return n
    if c.piped:
        n = splice(c.pipe_r, NULL, dst.fd, NULL, c.len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
    else:
        n = send(dst.fd, c.buf + c.off, c.len, MSG_NOSIGNAL)
        if n > 0:
            c.off += n
    if n < 0:
        return -errno
    return n


cdef inline void ack_now(fp_side* src, uint64_t moved, uint64_t sent) noexcept nogil:
    """The source socket was just emptied: after a bulk read (a buffer's worth or more
    this wake-up), acknowledge it now. A socket that relays request/answer traffic is
    in the kernel's ping-pong mode, where a lone segment shorter than the MSS is
    acknowledged only by the delayed-ACK timer (40 ms) or the next request; a sender
    with Nagle on (TCP_NODELAY off) holds the rest of its answer until then (issue 25,
    finding 8: profiles/response_64k_stall.md). TCP_QUICKACK sends the pending ACK
    once the receive queue is empty; it is not sticky, hence once per emptying read.
    Small exchanges skip it: their ACK rides on the next request, as with any client.
    So does a socket the relay never sent a byte to (`sent`: the other direction's
    count): ping-pong mode needs data sent, and a one-way bulk stream (an upload)
    would pay a syscall per wake-up for nothing."""
    cdef int one = 1
    if moved >= SMALL_BUF and sent > 0:
        setsockopt(src.fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one))


cdef ssize_t fill_past_urgent_mark(fp_worker* w, fp_chan* ch, fp_side* src) noexcept nogil:
    """splice() stops at a TCP urgent mark (and may report EOF there); recv() steps
    over it, dropping the out-of-band byte as most proxies do. Called with an
    empty pipe, so the bytes go into it in order and always fit."""
    cdef ssize_t n = recv(src.fd, w.bounce, min(<size_t>BOUNCE_SIZE, w.relay.chan_cap), 0)
    if n > 0:
        if write(ch.pipe_w, w.bounce, n) != n:
            return -EPIPE
        return n
    if n == 0:
        return 0
    if errno == EAGAIN:
        src.mark = MARK_NONE    # past the mark, and nothing more to read yet
        return -EAGAIN
    return -errno


cdef bint at_urgent_mark(fp_side* src) noexcept nogil:
    """Whether the next byte to read is an urgent mark. splice() returns 0 there
    once the FIN has come, however many bytes follow: a 0 it returns is the end of
    the stream only if this says no. The EPOLLPRI that would have told may still be
    on its way (urgent byte, more bytes and FIN arriving while we pump)."""
    cdef int mark = 0
    if ioctl(src.fd, SIOCATMARK, &mark) == 0 and mark:
        src.mark = MARK_AHEAD
        return True
    return False


cdef int bounce_copy(fp_worker* w, fp_chan* ch, fp_chan* other, fp_side* src,
                     fp_side* dst, ssize_t* moved) noexcept nogil:
    """Move up to BOUNCE_SIZE bytes from src to dst with no pipe or buffer: peek,
    send what dst takes, then consume as much. Sets moved, the channel's state at the
    end of the stream, and the readiness an EAGAIN disproves; returns a PumpResult."""
    cdef ssize_t n = recv(src.fd, w.bounce, BOUNCE_SIZE, MSG_PEEK)
    moved[0] = 0
    if n == 0:
        chan_on(ch, other, dst.fd, CE_SOURCE_END)
        return PUMP_OK
    if n < 0:
        if errno != EAGAIN:
            return PUMP_SRC_FAILED
        src.readable = False
        return PUMP_OK
    n = send(dst.fd, w.bounce, n, MSG_NOSIGNAL)
    if n < 0:
        if errno != EAGAIN:
            return PUMP_DST_FAILED
        dst.writable = False
        return PUMP_OK
    recv(src.fd, w.bounce, n, 0)    # the bytes just peeked: they are there
    moved[0] = n
    return PUMP_OK


cdef inline void conn_ready(fp_worker* w, fp_conn* c) noexcept nogil:
    if not c.ready:
        c.ready = True
        c.ready_next = w.ready
        w.ready = c


cdef int chan_pump(fp_worker* w, fp_conn* c, fp_chan* ch, fp_side* src, fp_side* dst,
                   fp_chan* other, bint inbound) noexcept nogil:
    """Move what can be moved from src to dst without blocking. Backpressure: a
    channel never holds more than chan_cap, and once full we stop reading src, so
    the kernel's receive window pushes back on the sender.

    Each turn of the loop: drain what is held into dst; once it is all out, the
    direction's state machine (direction.pxi) passes the FIN on if the source's end
    was read; then read more from src while its end is not read and there is room.
    Every end of stream read goes through chan_on(CE_SOURCE_END), after the checks
    that an apparent end (a 0, a short read after a FIN) is not an urgent mark."""
    cdef fp_relay* r = w.relay
    cdef ssize_t n
    cdef size_t room, cap
    cdef bint progress = True
    cdef int rc = PUMP_OK
    cdef uint64_t moved = 0
    while progress:
        progress = False
        if moved >= PUMP_BUDGET:
            # Fairness: the other connections, the timers and a stop get their
            # turn; the readiness kept in fp_side lets the ready list resume here.
            conn_ready(w, c)
            break
        if ch.len > 0 and dst.writable:
            n = chan_drain(r, ch, dst)
            if n > 0:
                if not ch.piped and <size_t>n < ch.len:
                    dst.writable = False    # a short send: the socket buffer is full
                ch.len -= n
                c.last_active_ms = w.now_ms     # a slow reader taking bytes is not idle
                progress = True
            elif n == -EAGAIN:
                dst.writable = False
            else:
                if n == -EPIPE:
                    # The kernel says EPIPE for a reset that came after the peer's FIN
                    # (tcp_reset in CLOSE_WAIT), ECONNRESET for one that came alone.
                    dst.fin = True
                rc = PUMP_DST_FAILED
                break
        if ch.len == 0 and ch.state == CH_DRAINING:
            # Half-close: the FIN goes on only once every byte before it is out
            # (after a TLS destination's close_notify: tls.pxi).
            tls_close_notify(dst)
            chan_on(ch, other, dst.fd, CE_ALL_SENT)
        if ch.len == 0:
            ch.piped = ch.bulk      # held bytes stay where they are: order holds
        cap = r.chan_cap if ch.piped else chan_buf_cap(r, ch)
        if not chan_source_ended(ch) and src.readable and ch.len < cap:
            if chan_acquire(w, ch, ch.piped) < 0:
                if ch.copy_only:
                    rc = PUMP_SRC_FAILED    # no buffer, and TLS cannot bounce past OpenSSL
                    break
                # Out of descriptors or memory (the channel is empty: one holding
                # bytes keeps its pipe). Waiting for a pipe could be for ever: once
                # every descriptor is held by connections waiting for one, none of
                # them ends. Copy through the worker's bounce buffer, which needs none.
                if not dst.writable:
                    break       # its EPOLLOUT brings us back; src stays readable
                rc = bounce_copy(w, ch, other, src, dst, &n)
                if rc != PUMP_OK:
                    break
                if n > 0:
                    moved += n
                    progress = True
                elif chan_source_ended(ch):
                    progress = True
                continue
            room = 0
            if not ch.piped:
                if ch.len == 0:
                    ch.off = 0
                elif ch.off + ch.len == cap:
                    memmove(ch.buf, ch.buf + ch.off, ch.len)   # room only at the front
                    ch.off = 0
                room = cap - ch.off - ch.len
            n = chan_fill(r, ch, src)
            if ch.piped and ((n == -EAGAIN and src.mark == MARK_AHEAD)
                             or (n == 0 and (src.mark != MARK_NONE or at_urgent_mark(src)))):
                # splice() stops at an urgent mark, and says 0 there once a FIN
                # has come, however many bytes follow: not the end of the stream.
                # (While muted we do not see EPOLLPRI, so a 0 then may be a mark
                # too; and EPOLLPRI may come after the 0: at_urgent_mark asks.)
                # Step over it with recv() once the pipe is empty.
                if ch.len == 0:
                    n = fill_past_urgent_mark(w, ch, src)
                else:
                    n = -EAGAIN
            if n > 0:
                if <size_t>n < room and not src.hup and src.mark != MARK_AHEAD:
                    # A short recv emptied the socket: skip the read that would
                    # only say EAGAIN; the next arrival raises a new edge. Not once
                    # a FIN was signalled (it raises no further edge and must still
                    # be read), nor for splice (short may mean the pipe is full).
                    src.readable = False
                    ack_now(src, moved + n, c.bytes_out if inbound else c.bytes_in)
                elif (<size_t>n < room and src.fin and src.mark == MARK_NONE
                        and not at_urgent_mark(src)):
                    # The FIN came (EPOLLRDHUP, no error) before this read, and a
                    # short recv empties the queue: the stream ends here. Saves the
                    # read that would say 0 (a reset after the FIN also reads as 0).
                    # Not at an urgent mark, seen, possibly unseen, or not seen yet
                    # (its EPOLLPRI may come after the FIN's EPOLLRDHUP was taken:
                    # at_urgent_mark asks): recv() stops short there with bytes
                    # after it, and the urgent byte itself is still unread.
                    chan_on(ch, other, dst.fd, CE_SOURCE_END)
                if r.use_splice and not ch.piped and not ch.copy_only \
                        and ch.off + ch.len + n == cap:
                    ch.bulk = True      # splice-auto: a full buffer means bulk
                ch.len += n
                moved += n
                progress = True
            elif n == 0:
                chan_on(ch, other, dst.fd, CE_SOURCE_END)
                progress = True
            elif n == -EAGAIN:
                # EAGAIN from splice is ambiguous: the socket is empty, or the pipe
                # is full (it holds skb fragments, not full pages, so it can fill
                # below chan_cap). Only an empty pipe proves the socket is empty.
                if ch.len == 0 or not ch.piped:
                    src.readable = False
                    ack_now(src, moved, c.bytes_out if inbound else c.bytes_in)
                if ch.piped and ch.len == 0 and moved < SMALL_BUF:
                    # The socket is empty after less than a buffer's worth in this
                    # wake-up: small messages again (a single short splice is no
                    # sign, a fast stream has many while the pipe keeps emptying).
                    ch.bulk = False
                if not ch.piped:
                    src.mark = MARK_NONE    # recv() steps over the mark: nothing left before it
            else:
                rc = PUMP_SRC_FAILED
                break
    if rc == PUMP_OK:
        side_mute(w, src, ch.len > 0 and not dst.writable and not chan_source_ended(ch))
        if ch.len == 0:
            chan_release(w, ch)
    if moved:   # counted on failure too: those bytes were taken from the source
        c.last_active_ms = w.now_ms
        conn_release_route(c)   # a byte went: no failing over from here on
        if inbound:
            c.bytes_in += moved
            fp_add_u64(&c.app_st.bytes_in, moved)
            fp_add_u64(&c.tgt_st.bytes_in, moved)
        else:
            c.bytes_out += moved
            fp_add_u64(&c.app_st.bytes_out, moved)
            fp_add_u64(&c.tgt_st.bytes_out, moved)
    return rc


cdef void conn_pump(fp_worker* w, fp_conn* c) noexcept nogil:
    # A side that hung up is read before it is written to. A write to a reset socket
    # takes its error (the kernel reports it once), and a read after that returns 0
    # whether or not a FIN came before the reset; read first, a FIN that came first
    # still reads as the end (0) and a reset alone as the error.
    cdef bint target_first = c.srv.hup and not c.cli.hup
    cdef int rc
    if target_first:
        rc = chan_pump(w, c, &c.down, &c.srv, &c.cli, &c.up, False)
        if rc == PUMP_OK:
            rc = chan_pump(w, c, &c.up, &c.cli, &c.srv, &c.down, True)
            if rc != PUMP_OK:
                conn_side_failed(w, c, &c.cli if rc == PUMP_SRC_FAILED else &c.srv)
        else:
            conn_side_failed(w, c, &c.srv if rc == PUMP_SRC_FAILED else &c.cli)
    else:
        rc = chan_pump(w, c, &c.up, &c.cli, &c.srv, &c.down, True)
        if rc == PUMP_OK:
            rc = chan_pump(w, c, &c.down, &c.srv, &c.cli, &c.up, False)
            if rc != PUMP_OK:
                conn_side_failed(w, c, &c.srv if rc == PUMP_SRC_FAILED else &c.cli)
        else:
            conn_side_failed(w, c, &c.cli if rc == PUMP_SRC_FAILED else &c.srv)
    if c.state == ST_RELAYING and chan_finished(&c.up) and chan_finished(&c.down):
        conn_close(w, c)


cdef void conn_side_failed(fp_worker* w, fp_conn* c, fp_side* dead) noexcept nogil:
    """A side reset, or a write to it failed: the connect failed after all (try
    the next target), or the connection fails (conn_fail)."""
    if target_failed_unused(c, dead):
        conn_fail_over(w, c)
    else:
        conn_fail(w, c, dead)


cdef inline bint target_failed_unused(fp_conn* c, fp_side* dead) noexcept nogil:
    """Reset before a byte went either way: a target dying with our connect in its
    accept queue resets it after the handshake. It never saw the client, so this
    is a failed connect. (The route is held until the first byte moves, and a
    target that sent its FIN before its reset did answer.)"""
    return dead == &c.srv and c.route != NULL and not chan_source_ended(&c.down)


cdef void conn_fail_over(fp_worker* w, fp_conn* c) noexcept nogil:
    """Leave the target that failed unused, and try the next one."""
    chan_release(w, &c.up)
    chan_release(w, &c.down)
    chan_on(&c.up, &c.down, c.srv.fd, CE_RETRY)     # a FIN the client sent goes there
    conn_connect_failed(w, c)


cdef void conn_fail(fp_worker* w, fp_conn* c, fp_side* dead) noexcept nogil:
    """One side failed: it reset, or a write to it failed. What it sent before
    (held here, or still queued on its socket: a reset socket reads to its end)
    goes on to the other side, never with a FIN; once that side has it all, or
    RESET_GRACE_MS has passed, it is reset, so it knows the stream was cut. The
    bytes held for the failed side are dropped with it.

    Unless its FIN came before the error (a peer that closed with SO_LINGER 0, or
    with unread data, after its FIN): that direction had ended cleanly, and a
    direct peer would get all of it and the FIN. So it does here too, with no
    deadline but the idle timeout; only the direction toward the failed side is
    dead, and the other side is reset once it has acknowledged everything."""
    cdef bint from_target = dead == &c.srv
    cdef fp_side* live = &c.cli if from_target else &c.srv
    cdef fp_chan* toward_live = &c.down if from_target else &c.up
    cdef fp_chan* toward_dead = &c.up if from_target else &c.down
    chan_release(w, toward_dead)
    # EPOLLRDHUP without an error said FIN (side_event), or the pump read to it.
    c.fin_first = dead.fin or chan_source_ended(toward_live)
    c.unacked = -1
    if not c.fin_first:
        chan_on(toward_live, toward_dead, live.fd, CE_CUT)  # no FIN will be passed on
    dead.readable = True
    side_mute(w, live, True)        # nothing more is read from it
    c.state = ST_FAILING
    c.failed = dead
    c.deadline_ms = w.now_ms + RESET_GRACE_MS
    w.nfailing += 1
    timer_set(w, c, w.now_ms + TICK_MS)
    conn_fail_flush(w, c)


cdef void conn_fail_flush(fp_worker* w, fp_conn* c) noexcept nogil:
    """Move the failed side's last bytes on; reset the other side once it has
    them all (sent and acknowledged: a reset would drop what is still queued)
    or the grace is over."""
    cdef bint from_target = c.failed == &c.srv
    cdef fp_side* live = &c.cli if from_target else &c.srv
    cdef fp_chan* toward_live = &c.down if from_target else &c.up
    cdef int queued = 0
    cdef int rc = chan_pump(w, c, toward_live, c.failed, live,
                            &c.up if from_target else &c.down, not from_target)
    if rc == PUMP_DST_FAILED:
        conn_abort(w, c, live)      # the other side failed too
        return
    if rc == PUMP_SRC_FAILED:       # its error ends what it sent, with no FIN
        chan_on(toward_live, &c.up if from_target else &c.down, live.fd, CE_SOURCE_ERROR)
    if toward_live.len == 0 and chan_source_ended(toward_live):
        if c.fin_first:
            # The FIN that came before the error, after the last byte. chan_pump
            # leaves it to the close when the way back is shut (perhaps in an
            # earlier batch), and this close is a reset: send it now. A repeat is a
            # no-op, and it counts in SIOCOUTQ until acknowledged.
            side_shut_wr(live, True)
        if ioctl(live.fd, SIOCOUTQ, &queued) < 0 or queued == 0:
            conn_abort(w, c, live)
            return
        if queued != c.unacked:
            c.unacked = queued
            c.last_active_ms = w.now_ms     # a slow reader still taking bytes
    if c.fin_first:
        if c.idle_timeout_ms > 0 and w.now_ms - c.last_active_ms >= c.idle_timeout_ms:
            fp_add_u64(&c.app_st.idle_timeouts, 1)
            c.result = R_IDLE_TIMEOUT
            conn_abort(w, c, live)
    elif w.now_ms >= c.deadline_ms:
        conn_abort(w, c, live)


cdef void conn_check_error(fp_worker* w, fp_conn* c, fp_side* s) noexcept nogil:
    """EPOLLERR the pump did not act on: the side reset while we were neither
    reading it (it sent its FIN already, or its bytes have no room here: the
    other side is not reading) nor writing to it. Only its pending error tells."""
    cdef fp_chan* reading = &c.up if s == &c.cli else &c.down
    cdef fp_chan* writing = &c.down if s == &c.cli else &c.up
    cdef int err = 0
    cdef socklen_t size = sizeof(err)
    if chan_source_ended(reading):
        conn_side_failed(w, c, s)
        return
    if writing.state == CH_DONE:
        # Our FIN is queued to it, so its error says ECONNRESET whether or not its
        # own FIN came first (EPIPE tells only in CLOSE_WAIT), and a FIN reported
        # in the same event as the error did not set s.fin. Taking the error now
        # would cut a reply that ended cleanly (the fuzzer's seed 14413). Nothing
        # more is written to it: leave the error to the pump's read, which tells at
        # the end: 0 after a FIN, the error without one. Until the other side has
        # room for what is left, that is its idle timeout's business, as for a FIN.
        return
    if getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &size) != 0 or err == 0:
        return
    if err == EPIPE:
        s.fin = True    # a reset after its FIN (tcp_reset in CLOSE_WAIT): see chan_pump
    conn_side_failed(w, c, s)


# -- life cycle -------------------------------------------------------------------

cdef fp_conn* conn_new(fp_worker* w, int fd) noexcept nogil:
    # Cache-line aligned, so the hot fields at its start share one line.
    cdef size_t size = (sizeof(fp_conn) + 63) & ~(<size_t>63)
    cdef fp_conn* c = <fp_conn*>aligned_alloc(64, size)
    if c == NULL:
        return NULL
    memset(c, 0, size)
    c.cli.kind = KIND_SIDE
    c.cli.fd = fd
    c.cli.conn = c
    c.srv.kind = KIND_SIDE
    c.srv.fd = -1
    c.srv.conn = c
    c.up.pipe_r = c.up.pipe_w = -1
    c.down.pipe_r = c.down.pipe_w = -1
    c.last_active_ms = w.now_ms
    c.start_ms = w.now_ms
    c.tslot = -1
    count_held(&w.held_conns, 1)
    c.next = w.conns
    if w.conns != NULL:
        w.conns.prev = c
    w.conns = c
    fp_store_int(&w.nconns, w.nconns + 1)
    return c


cdef void conn_release_route(fp_conn* c) noexcept nogil:
    if c.route != NULL:
        route_decref(c.route)
        c.route = NULL


cdef void conn_close(fp_worker* w, fp_conn* c) noexcept nogil:
    """Close both sockets and unlink; the memory goes after the event batch, since
    later events of the same batch may still point at it."""
    cdef bint queued = c.state == ST_RETRY
    if c.state == ST_CLOSED:
        return
    conn_finish(w, c)
    if c.state == ST_CONNECTING:
        w.nconnecting -= 1
    if c.tgt_st != NULL:
        fp_add_i64(&c.tgt_st.active, -1)
    if c.state == ST_FAILING:
        w.nfailing -= 1
    fp_add_i64(&c.app_st.active, -1)
    c.state = ST_CLOSED
    timer_del(w, c)
    conn_release_route(c)
    if c.cli.fd >= 0:
        close_socket(w, c.cli.fd)
        c.cli.fd = -1
    if c.srv.fd >= 0:
        close_socket(w, c.srv.fd)
        c.srv.fd = -1
    chan_release(w, &c.up)
    chan_release(w, &c.down)
    if c.prev != NULL:
        c.prev.next = c.next
    else:
        w.conns = c.next
    if c.next != NULL:
        c.next.prev = c.prev
    fp_store_int(&w.nconns, w.nconns - 1)
    if not queued:              # else the retry pass buries it, keeping that list whole
        bury(w, c)


cdef inline void bury(fp_worker* w, fp_conn* c) noexcept nogil:
    list_join(c, LIST_GRAVE)
    c.grave_next = w.graveyard
    w.graveyard = c


cdef void conn_abort(fp_worker* w, fp_conn* c, fp_side* victim) noexcept nogil:
    """One side reset: reset the other one too, so the reset is propagated."""
    if c.result == R_OK:
        c.result = R_RESET
    if victim.fd >= 0:
        set_reset_on_close(victim.fd)
    conn_close(w, c)


cdef void conn_established(fp_worker* w, fp_conn* c) noexcept nogil:
    cdef int proxy_protocol = c.route.proxy_protocol
    fp_add_u64(&c.tgt_st.connections, 1)
    count_connect_time(c.tgt_st, monotonic_us() - c.connect_start_us)
    w.nconnecting -= 1
    c.state = ST_RELAYING
    c.last_active_ms = w.now_ms
    c.srv.writable = True
    lifetime_begin(w, c, c.route)
    conn_rearm(w, c)
    if proxy_protocol and send_proxy_header(c, proxy_protocol) < 0:
        conn_abort(w, c, &c.cli)
        return
    if tls_connect_wanted(c):
        tls_connect_begin(w, c)     # reencrypt: relaying starts once it is done
        return
    conn_relay_start(w, c)


cdef void conn_relay_start(fp_worker* w, fp_conn* c) noexcept nogil:
    if c.up.len > 0:
        # The ClientHello read to route by name (preface.pxi) goes first. It counts
        # as moved, as it did when it was peeked and then pumped from the socket:
        # from here on no other target is tried.
        conn_release_route(c)
        c.bytes_in += c.up.len
        fp_add_u64(&c.app_st.bytes_in, c.up.len)
        fp_add_u64(&c.tgt_st.bytes_in, c.up.len)
    conn_pump(w, c)


cdef void conn_connect_next(fp_worker* w, fp_conn* c) noexcept nogil:
    """Try targets until a connect is under way or has completed; when none is
    left, close the client at once."""
    cdef fp_route* rt = c.route
    cdef fp_target* t
    cdef int idx, fd, rc, err, one = 1
    while True:
        idx = pick_next(rt, c)
        if idx < 0:
            fp_add_u64(&c.app_st.no_target, 1)
            c.result = R_CONNECT_TIMEOUT if c.timed_out else R_NO_TARGET
            conn_close(w, c)
            return
        t = &rt.targets[idx]
        if not target_claim(w.relay, t):
            continue                # filled up meanwhile (limits.pxi)
        c.target_idx = idx
        c.tgt_slot = t.slot
        c.attempts += 1
        fd = open_socket(w, t.addr.ss_family)
        if fd < 0:
            target_unclaim(w.relay, t)
            conn_local_error(w, c)  # our shortage, not the target's fault
            return
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        tune_socket(rt, fd)
        c.connect_start_us = monotonic_us()
        rc = connect(fd, <sockaddr*>&t.addr, t.addrlen)
        if rc < 0 and errno != EINPROGRESS:
            err = errno
            close_socket(w, fd)
            target_unclaim(w.relay, t)
            if err == ENOBUFS or err == ENOMEM or err == EAGAIN:
                conn_local_error(w, c)  # out of memory: another target won't help
                return
            # Refused, unreachable, or EADDRNOTAVAIL: no local port or source address
            # left toward this destination, which says nothing about the next one.
            count_connect_failure(w, stats_slot(w.relay, t.slot))
            continue
        c.srv.fd = fd
        c.srv.readable = False
        c.srv.writable = False
        if register_side(w, &c.srv) < 0:
            close_socket(w, fd)
            c.srv.fd = -1
            target_unclaim(w.relay, t)
            continue
        c.deadline_ms = w.now_ms + rt.connect_timeout_ms
        c.state = ST_CONNECTING
        w.nconnecting += 1
        timer_set(w, c, c.deadline_ms)
        # Busy from the first SYN on (target_claim counted it), so least-conn and
        # random see a burst coming.
        c.tgt_st = stats_slot(w.relay, t.slot)
        if rc == 0:
            conn_established(w, c)
        return


cdef void conn_connect_failed(fp_worker* w, fp_conn* c) noexcept nogil:
    """The attempt under way failed (refused, unreachable, timed out, or reset
    before a byte went either way). The retry waits until the event batch is done:
    events for the old socket may follow."""
    count_connect_failure(w, c.tgt_st)
    fp_add_i64(&c.tgt_st.active, -1)
    c.tgt_st = NULL
    close_socket(w, c.srv.fd)
    c.srv.fd = -1
    c.srv.hup = False
    c.srv.fin = False
    c.srv.muted = False
    c.srv.mark = MARK_NONE
    if c.state == ST_CONNECTING:
        w.nconnecting -= 1
    c.state = ST_RETRY
    timer_del(w, c)
    list_join(c, LIST_RETRY)
    c.retry_next = w.retry
    w.retry = c


cdef void side_event(fp_worker* w, fp_side* s, uint32_t events) noexcept nogil:
    cdef fp_conn* c = s.conn
    if c.state == ST_CLOSED:
        return
    # Record readiness even when we cannot act on it yet: edges do not repeat.
    if events & EV_READ:
        s.readable = True
    if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
        s.hup = True
    if events & EPOLLRDHUP and not events & EPOLLERR:
        s.fin = True
    if events & EPOLLPRI:
        s.mark = MARK_AHEAD
    elif s.mark == MARK_UNSEEN and not s.muted:
        s.mark = MARK_NONE      # events now say whether urgent data waits
    if events & EV_WRITE:
        s.writable = True
    if c.state == ST_PREFACE:
        if s == &c.cli:
            preface_step(w, c)
        return
    if c.state == ST_HANDSHAKE:
        tls_event(w, c, s, events)
        return
    if c.state == ST_RETRY:
        if s == &c.cli and events & (EPOLLERR | EPOLLHUP):
            conn_close(w, c)        # the client is gone: stop failing over for it
        return
    if c.state == ST_RELAYING:
        conn_pump(w, c)
        if c.state == ST_RELAYING and events & EPOLLERR:
            conn_check_error(w, c, s)
        return
    if c.state == ST_FAILING:
        if s != c.failed and events & EPOLLERR:
            conn_abort(w, c, s)     # the other side is gone too
        else:
            conn_fail_flush(w, c)
        return
    # Connecting
    if s == &c.srv:
        # A failed connect always raises EPOLLERR; writable without it is success,
        # so SO_ERROR need not be asked for. With it, the target may still have
        # answered: accepted, sent its FIN and reset, all before this event. A
        # stream that ended cleanly is relayed, not failed over (bytes with no FIN
        # are a failed connect, as in conn_side_failed).
        if events & (EPOLLERR | EPOLLHUP) and peek(s) != 0:
            conn_connect_failed(w, c)
        elif events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
            conn_established(w, c)
    elif events & (EPOLLERR | EPOLLHUP) and peek(s) < 0:
        conn_abort(w, c, &c.srv)            # client gone before the target answered
    # (A client whose bytes or FIN came before its error is relayed once connected:
    # the pump reads them, then its error, or the 0 of its FIN.)


cdef ssize_t peek(fp_side* s) noexcept nogil:
    """What a side that signalled an error sent before it: >0 bytes, 0 its FIN
    (recv() reports the FIN before a pending error), or -1 nothing but the error,
    which the peek takes (there is nothing else to read)."""
    cdef char byte
    return recv(s.fd, &byte, 1, MSG_PEEK)


cdef bint shed_one_client(fp_worker* w, int listen_fd) noexcept nogil:
    """Out of descriptors, the pending client would stay in the backlog and keep
    the listener readable forever. Give up the spare descriptor, take the client
    and close it at once, then take the spare back."""
    cdef int fd
    if w.reserve_fd < 0:
        w.reserve_fd = open_devnull()   # lost to another thread last time: retry
        if w.reserve_fd < 0:
            return False
    close(w.reserve_fd)
    fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC)
    if fd >= 0:
        set_reset_on_close(fd)
        close(fd)
    w.reserve_fd = open_devnull()
    return fd >= 0


cdef void conn_local_error(fp_worker* w, fp_conn* c) noexcept nogil:
    c.result = R_LOCAL_ERROR
    fp_add_u64(&c.app_st.local_errors, 1)
    conn_abort(w, c, &c.cli)


cdef void accept_clients(fp_worker* w, fp_listener* l) noexcept nogil:
    cdef sockaddr_storage peer
    cdef socklen_t plen
    cdef int fd, i
    cdef timespec pause
    for i in range(ACCEPT_BATCH):
        plen = sizeof(peer)
        fd = accept4(l.fd, <sockaddr*>&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd >= 0:
            count_held(&w.held_sockets, 1)
        if fd < 0:
            if errno == EINTR or errno == ECONNABORTED:
                continue
            if (errno == EMFILE or errno == ENFILE) and shed_one_client(w, l.fd):
                continue
            if errno == ENOBUFS or errno == ENOMEM or errno == EMFILE or errno == ENFILE:
                # Short of memory, or of descriptors with no spare to shed a client
                # with: back off a little rather than spin on a listener that stays
                # readable.
                pause.tv_sec = 0
                pause.tv_nsec = 1000000
                nanosleep(&pause, NULL)
            return
        if not hand_off(w, fd, l.port, &peer):
            take_client(w, fd, l.port, &peer)


cdef void take_client(fp_worker* w, int fd, int port, sockaddr_storage* peer) noexcept nogil:
    """Serve a client accepted on a listener of `port` (0: steered, its own local
    port tells), by this worker or by another that handed it over."""
    cdef fp_relay* r = w.relay
    cdef sockaddr_storage local
    cdef socklen_t llen = sizeof(local)
    cdef int app
    cdef fp_route* rt
    cdef fp_stats* app_st
    cdef fp_conn* c
    local.ss_family = 0
    if port == 0:
        # Steered: the port the client dialled tells the app.
        getsockname(fd, <sockaddr*>&local, &llen)
        port = ntohs((<sockaddr_in*>&local).sin_port)   # same offset for IPv6
    app = fp_load_int(&r.port_app[port])
    if app == PORT_SNI:
        accept_by_name(w, fd, peer, &local, port)
        return
    rt = route_get(r, app) if app >= 0 else NULL
    if rt == NULL:
        close_socket(w, fd)     # a port no app owns (any more)
        return
    if rt.proxy_protocol and local.ss_family == 0:
        getsockname(fd, <sockaddr*>&local, &llen)
    app_st = stats_slot(r, rt.app_slot)
    if not admit_at_accept(w, rt, app_st, peer, True):
        alog_rejected(w, peer, port, rt.app_slot)
        route_decref(rt)
        close_socket(w, fd)
        return
    if rt.max_conns > 0 and fp_load_i64(&app_st.active) >= rt.max_conns:
        fp_add_u64(&app_st.rejected, 1)
        alog_rejected(w, peer, port, rt.app_slot)
        route_decref(rt)
        close_socket(w, fd)
        return
    c = conn_new(w, fd)
    if c == NULL:
        route_decref(rt)
        close_socket(w, fd)
        return
    memcpy(&c.peer, peer, sizeof(sockaddr_storage))
    memcpy(&c.local, &local, sizeof(local))
    c.route = rt
    c.app_st = app_st
    c.idle_timeout_ms = rt.idle_timeout_ms
    c.port = port
    c.app_slot = rt.app_slot
    fp_add_u64(&app_st.connections, 1)
    fp_add_i64(&app_st.active, 1)
    if register_side(w, &c.cli) < 0:
        conn_close(w, c)
        return
    if rt.accept_proxy:
        if admit_into_preface(w, c):
            preface_begin(w, c, True)
    else:
        conn_start(w, c)
