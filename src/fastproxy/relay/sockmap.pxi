# Relay: sockmap. Once a connection is established (and every preface is done), its two
# sockets are paired in the maps of bpf/relay.c, whose sk_skb verdict program moves each
# one's bytes straight to the other's send side: no wake-up here for data. The worker
# watches the sockets for FIN, reset and hang-up only, and still owns the connection:
#
# - FIN from one side: passed on (shutdown(SHUT_WR) of the other) only once every byte
#   before it is in the other socket's send queue. What we rely on: the program counts the
#   bytes it redirects from each socket (`peers`), and the other socket's TCP_INFO
#   tcpi_bytes_acked plus SIOCOUTQ is what it has been given to send, ever; less what it
#   had at pairing, that is what came through the kernel.
#   When the two agree, the kernel's queue between them (the peer psock's) is empty.
# - Reset: the other side is reset once it has everything the failed side sent and has
#   sent it out (SIOCOUTQ 0), or after RESET_GRACE_MS, as in conn_fail_flush. Unlike
#   splice, a target that resets right after the connect is not failed over: the
#   client's bytes may already be in its socket.
# - Backpressure: NOT provided. The kernel queues what is redirected to a socket whose
#   send buffer is full without limit (see bpf/relay.c), and pausing a source by taking it
#   out of `sources` while bytes arrive loses data now and then (an skb whose verdict runs
#   as the program is detached is dropped): a peer that never reads lets the other side
#   push into kernel memory without bound. Hence opt-in.
# - Intact bytes: NOT guaranteed by this kernel, which now and then sends a segment twice
#   (bpf/relay.c). Hence refused unless FASTPROXY_UNSAFE_SOCKMAP=1 (sockmap_relay.py).
# - Idle timeout and bytes_in/bytes_out: from the counters, read when the idle timer
#   fires, every SOCKMAP_SWEEP_MS, and at the end.
# - Close: the sockets leave the maps (and their counters) just before they are closed.
#
# Pairing is ordered so that no byte can go astray: both sockets become redirect targets
# (`socks`, where no program runs) before either becomes a source; the client becomes a
# source first, so that if the kernel refuses it (a FIN came meanwhile) nothing moved yet
# and splice carries on; if it then refuses the target (its FIN came in those few
# microseconds), the client's bytes may be on their way and the connection is reset.
# SO_RCVLOWAT set to 1 runs the data-ready hook at once, which hands the bytes queued
# before pairing to the program: without that kick they would wait for the next segment.

cdef enum:
    BPF_MAP_LOOKUP_ELEM = 1
    BPF_MAP_UPDATE_ELEM = 2
    BPF_MAP_DELETE_ELEM = 3
    SOCKMAP_POLL_MS = 1             # poll interval while a FIN or reset waits for its bytes
    SOCKMAP_SWEEP_MS = 1000         # counters of every paired connection read this often
    TCPI_BYTES_ACKED = 120          # offset of tcpi_bytes_acked in struct tcp_info
    TCP_INFO_SIZE = 232
    # No EPOLLIN (on this kernel every skb the program takes wakes the socket's readers)
    # nor EPOLLOUT: FIN, reset and hang-up only (EPOLLERR and EPOLLHUP always come).
    MAPPED_EVENTS = EPOLLRDHUP | EPOLLET

# union bpf_attr as the map element commands read it.
ctypedef struct fp_bpf_elem:
    uint32_t map_fd
    uint32_t _pad
    uint64_t key
    uint64_t value
    uint64_t flags

# The value of bpf/relay.c's `peers` map.
ctypedef struct fp_bpf_peer:
    uint64_t cookie
    uint64_t bytes

ctypedef struct fp_kside:
    uint64_t cookie             # SO_COOKIE: the socket's key in the maps
    uint64_t relayed            # bytes the program redirected from it, as last read
    uint64_t given_base         # bytes it had been given to send before pairing

cdef struct fp_mapped:
    fp_conn* conn
    fp_kside cli
    fp_kside srv
    bint pending                # a FIN or a reset waits for the bytes before it
    fp_mapped* prev
    fp_mapped* next


cdef int bpf_elem(int cmd, int map_fd, const void* key, const void* value) noexcept nogil:
    cdef fp_bpf_elem attr
    memset(&attr, 0, sizeof(attr))
    attr.map_fd = map_fd
    attr.key = <uint64_t><size_t>key
    attr.value = <uint64_t><size_t>value
    if syscall(SYS_bpf, cmd, &attr, sizeof(attr)) < 0:
        return -errno
    return 0


cdef uint64_t socket_cookie(int fd) noexcept nogil:
    cdef uint64_t cookie = 0
    cdef socklen_t size = sizeof(cookie)
    if getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &size) < 0:
        return 0
    return cookie


cdef bint tcp_acked(int fd, uint64_t* acked) noexcept nogil:
    cdef uint8_t info[TCP_INFO_SIZE]
    cdef socklen_t size = sizeof(info)
    if getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, &size) < 0 or size < TCPI_BYTES_ACKED + 8:
        return False
    memcpy(acked, info + TCPI_BYTES_ACKED, 8)
    return True


cdef bint bytes_given(int fd, uint64_t* given) noexcept nogil:
    """Bytes the socket has taken to send, ever: acknowledged plus still queued. Read in
    that order, an ACK in between can only make the sum smaller, never larger."""
    cdef uint64_t acked
    cdef int queued = 0
    if not tcp_acked(fd, &acked) or ioctl(fd, SIOCOUTQ, &queued) < 0:
        return False
    given[0] = acked + <uint64_t>queued
    return True


cdef inline void kick(int fd) noexcept nogil:
    """Run the data-ready hook now: the program takes what waits in the receive queue."""
    cdef int one = 1
    setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one))


cdef int watch_hangups(fp_worker* w, fp_side* s) noexcept nogil:
    cdef epoll_event ev
    ev.events = MAPPED_EVENTS
    ev.data.ptr = s
    return epoll_ctl(w.epfd, EPOLL_CTL_MOD, s.fd, &ev)


cdef inline int peer_entry(fp_relay* r, fp_kside* k, fp_kside* dst) noexcept nogil:
    """Write k's `peers` entry: where its bytes go, no byte counted yet."""
    cdef fp_bpf_peer peer
    peer.cookie = dst.cookie
    peer.bytes = 0
    return bpf_elem(BPF_MAP_UPDATE_ELEM, r.sm_peers, &k.cookie, &peer)


cdef void sockmap_unpair(fp_relay* r, fp_mapped* m) noexcept nogil:
    """Out of the sources first (nothing more is redirected), then the targets, then the
    counters. Deleting what is not there is harmless."""
    bpf_elem(BPF_MAP_DELETE_ELEM, r.sm_sources, &m.cli.cookie, NULL)
    bpf_elem(BPF_MAP_DELETE_ELEM, r.sm_sources, &m.srv.cookie, NULL)
    bpf_elem(BPF_MAP_DELETE_ELEM, r.sm_socks, &m.cli.cookie, NULL)
    bpf_elem(BPF_MAP_DELETE_ELEM, r.sm_socks, &m.srv.cookie, NULL)
    bpf_elem(BPF_MAP_DELETE_ELEM, r.sm_peers, &m.cli.cookie, NULL)
    bpf_elem(BPF_MAP_DELETE_ELEM, r.sm_peers, &m.srv.cookie, NULL)


cdef bint side_base(int fd, fp_kside* k) noexcept nogil:
    k.cookie = socket_cookie(fd)
    return k.cookie != 0 and bytes_given(fd, &k.given_base)


cdef bint sockmap_enter(fp_worker* w, fp_conn* c) noexcept nogil:
    """Hand an established connection to the kernel. False: it stays with splice (no
    sockmap, a FIN or reset already came, or the kernel refused it); the connection is
    then exactly as before the call."""
    cdef fp_relay* r = w.relay
    cdef fp_mapped* m
    cdef int fd
    if not r.use_sockmap or c.cli.hup or c.srv.hup or c.up.len or c.down.len:
        return False        # the maps take only established sockets: a FIN makes them refuse
    m = <fp_mapped*>calloc(1, sizeof(fp_mapped))
    if m == NULL:
        return False
    m.conn = c
    if not side_base(c.cli.fd, &m.cli) or not side_base(c.srv.fd, &m.srv) \
            or peer_entry(r, &m.cli, &m.srv) < 0 or peer_entry(r, &m.srv, &m.cli) < 0:
        sockmap_unpair(r, m)
        free(m)
        return False
    fd = c.cli.fd
    if bpf_elem(BPF_MAP_UPDATE_ELEM, r.sm_socks, &m.cli.cookie, &fd) < 0:
        sockmap_unpair(r, m)
        free(m)
        return False
    fd = c.srv.fd
    if bpf_elem(BPF_MAP_UPDATE_ELEM, r.sm_socks, &m.srv.cookie, &fd) < 0:
        sockmap_unpair(r, m)
        free(m)
        return False
    fd = c.cli.fd
    if bpf_elem(BPF_MAP_UPDATE_ELEM, r.sm_sources, &m.cli.cookie, &fd) < 0:
        sockmap_unpair(r, m)   # nothing ran yet: no socket was a source
        free(m)
        return False
    # From here on the client's bytes may be on their way: the connection is the kernel's.
    conn_release_route(c)   # no failing over
    c.mapped = m
    m.next = w.sm_conns
    if w.sm_conns != NULL:
        w.sm_conns.prev = m
    w.sm_conns = m
    watch_hangups(w, &c.cli)
    watch_hangups(w, &c.srv)
    fd = c.srv.fd
    if bpf_elem(BPF_MAP_UPDATE_ELEM, r.sm_sources, &m.srv.cookie, &fd) < 0:
        c.result = R_LOCAL_ERROR    # refused (its FIN came meanwhile): see above
        fp_add_u64(&c.app_st.local_errors, 1)
        conn_abort(w, c, &c.cli)
        return True
    kick(c.srv.fd)
    kick(c.cli.fd)
    return True


cdef bint sockmap_read(fp_relay* r, fp_kside* k) noexcept nogil:
    cdef fp_bpf_peer peer
    if bpf_elem(BPF_MAP_LOOKUP_ELEM, r.sm_peers, &k.cookie, &peer) < 0:
        return False
    k.relayed = peer.bytes
    return True


cdef inline void count_moved(fp_worker* w, fp_conn* c, bint inbound, uint64_t n) noexcept nogil:
    c.last_active_ms = w.now_ms
    if inbound:
        c.bytes_in += n
        fp_add_u64(&c.app_st.bytes_in, n)
        fp_add_u64(&c.tgt_st.bytes_in, n)
    else:
        c.bytes_out += n
        fp_add_u64(&c.app_st.bytes_out, n)
        fp_add_u64(&c.tgt_st.bytes_out, n)


cdef void sockmap_count(fp_worker* w, fp_conn* c) noexcept nogil:
    """Read both counters and add what they moved since the last read to the stats."""
    cdef fp_mapped* m = c.mapped
    cdef uint64_t before_in = m.cli.relayed, before_out = m.srv.relayed
    sockmap_read(w.relay, &m.cli)
    sockmap_read(w.relay, &m.srv)
    if m.cli.relayed != before_in:
        count_moved(w, c, True, m.cli.relayed - before_in)
    if m.srv.relayed != before_out:
        count_moved(w, c, False, m.srv.relayed - before_out)


cdef bint sockmap_delivered(fp_worker* w, fp_conn* c, fp_side* src) noexcept nogil:
    """Whether every byte the program took from src is in the other socket's send queue."""
    cdef fp_mapped* m = c.mapped
    cdef bint from_client = src == &c.cli
    cdef fp_kside* k_src = &m.cli if from_client else &m.srv
    cdef fp_kside* k_dst = &m.srv if from_client else &m.cli
    cdef fp_side* dst = &c.srv if from_client else &c.cli
    cdef uint64_t given
    if src.fd >= 0:
        kick(src.fd)        # the program takes anything still queued
    sockmap_count(w, c)
    return bytes_given(dst.fd, &given) and given - k_dst.given_base == k_src.relayed


cdef void sockmap_step(fp_worker* w, fp_conn* c) noexcept nogil:
    """Pass on the FINs and resets whose bytes have all gone through; poll again
    soon for those still waiting."""
    cdef fp_mapped* m = c.mapped
    cdef fp_side* live
    cdef int queued = 0
    cdef bint delivered
    if c.failed != NULL:
        live = &c.cli if c.failed == &c.srv else &c.srv
        # A direction already shut had all its bytes delivered (and a FIN counts in the
        # peer's acknowledged bytes, so the comparison would no longer hold).
        delivered = chan_finished(&c.down if c.failed == &c.srv else &c.up) \
            or sockmap_delivered(w, c, c.failed)
        if w.now_ms >= c.deadline_ms or (delivered
                and (ioctl(live.fd, SIOCOUTQ, &queued) < 0 or queued == 0)):
            conn_abort(w, c, live)
            return
        sockmap_pending(w, m, True)
        return
    if c.up.state == CH_DRAINING and sockmap_delivered(w, c, &c.cli):
        chan_on(&c.up, &c.down, c.srv.fd, CE_ALL_SENT)
    if c.down.state == CH_DRAINING and sockmap_delivered(w, c, &c.srv):
        chan_on(&c.down, &c.up, c.cli.fd, CE_ALL_SENT)
    if chan_finished(&c.up) and chan_finished(&c.down):
        conn_close(w, c)
        return
    sockmap_pending(w, m, c.up.state == CH_DRAINING or c.down.state == CH_DRAINING)


cdef inline void sockmap_pending(fp_worker* w, fp_mapped* m, bint pending) noexcept nogil:
    if m.pending != pending:
        m.pending = pending
        w.sm_pending += 1 if pending else -1


cdef void conn_fail_mapped(fp_worker* w, fp_conn* c, fp_side* s) noexcept nogil:
    """A side reset (or a write to it failed): as conn_fail, once the other side has
    what the failed one sent."""
    if c.failed != NULL:
        if s != c.failed:
            conn_abort(w, c, s)     # the other side is gone too
        return
    sockmap_count(w, c)
    if c.result == R_OK:
        c.result = R_RESET
    c.failed = s
    c.deadline_ms = w.now_ms + RESET_GRACE_MS
    sockmap_step(w, c)


cdef void sockmap_event(fp_worker* w, fp_conn* c, fp_side* s, uint32_t events) noexcept nogil:
    """A FIN, reset or hang-up on a paired socket."""
    cdef int err = 0
    cdef socklen_t size = sizeof(err)
    if events & EPOLLERR or (events & EPOLLHUP
            and getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &size) == 0 and err != 0):
        conn_fail_mapped(w, c, s)
        return
    if events & (EPOLLRDHUP | EPOLLHUP):
        if s == &c.cli:
            chan_on(&c.up, &c.down, c.srv.fd, CE_SOURCE_END)
        else:
            chan_on(&c.down, &c.up, c.cli.fd, CE_SOURCE_END)
        sockmap_step(w, c)


cdef void sockmap_leave(fp_worker* w, fp_conn* c) noexcept nogil:
    """Before the sockets close: the last counts, then out of the maps."""
    cdef fp_mapped* m = c.mapped
    sockmap_count(w, c)
    sockmap_unpair(w.relay, m)
    sockmap_pending(w, m, False)
    if m.prev != NULL:
        m.prev.next = m.next
    else:
        w.sm_conns = m.next
    if m.next != NULL:
        m.next.prev = m.prev
    c.mapped = NULL
    free(m)


cdef void sockmap_poll(fp_worker* w) noexcept nogil:
    """After each event batch: the connections whose FIN or reset waits for its bytes.
    Every SOCKMAP_SWEEP_MS, every connection's counters, so the stats keep up with a
    long transfer (the idle timer reads them itself when it fires: timers.pxi)."""
    cdef fp_mapped* m = w.sm_conns
    cdef fp_mapped* nxt
    cdef bint sweep = m != NULL and w.now_ms >= w.sm_next_sweep_ms
    if sweep:
        w.sm_next_sweep_ms = w.now_ms + SOCKMAP_SWEEP_MS
    if w.sm_pending == 0 and not sweep:
        return
    while m != NULL:
        nxt = m.next        # m may be freed by the step
        if m.pending:
            sockmap_step(w, m.conn)
        elif sweep:
            sockmap_count(w, m.conn)
        m = nxt


cdef inline int sockmap_timeout(fp_worker* w, int timeout) noexcept nogil:
    if w.sm_pending > 0 and timeout > SOCKMAP_POLL_MS:
        return SOCKMAP_POLL_MS
    if w.sm_conns != NULL and timeout > SOCKMAP_SWEEP_MS:
        return SOCKMAP_SWEEP_MS
    return timeout
