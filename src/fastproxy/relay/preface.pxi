# Before a target is chosen, a client may owe us a PROXY header (AcceptProxyProtocol)
# and, on a port routed by server name, a TLS ClientHello. The PROXY header is peeked
# (at most PP_MAX bytes) and then read exactly. The ClientHello is read into the
# connection's upstream buffer (c.up), from which the relay sends it on to the
# target before anything else; everything after it is relayed as usual. Peeking it
# instead cost the kernel time quadratic in the segments queued (each peek walks
# the receive queue from its head, per segment: 0.6 s for one 16 KB hello sent a
# byte per segment). A parse reads from the start, so it runs only once the client
# has sent as much as the last one said it lacks (preface_need): a preface trickled
# in one byte per segment costs a bounded number of parses, not one per byte
# (issue 19). A client has PREFACE_TIMEOUT_MS for all of it.

cdef void preface_begin(fp_worker* w, fp_conn* c, bint want_proxy) noexcept nogil:
    c.state = ST_PREFACE
    c.preface_proxy = want_proxy
    c.preface_need = 0
    c.deadline_ms = w.now_ms + PREFACE_TIMEOUT_MS
    timer_set(w, c, c.deadline_ms)


cdef void preface_fail(fp_worker* w, fp_conn* c, int result) noexcept nogil:
    if result == R_PROXY_ERROR:
        fp_add_u64(&c.app_st.proxy_errors, 1)
    elif result == R_SNI_UNMATCHED:
        fp_add_u64(&c.app_st.sni_unmatched, 1)
    else:
        fp_add_u64(&c.app_st.sni_errors, 1)
    c.result = result
    # A reset, not a FIN: the client is refused, not answered (and when its preface
    # was peeked, its unread bytes made the close a reset anyway).
    set_reset_on_close(c.cli.fd)
    conn_close(w, c)


cdef void preface_timeout(fp_worker* w, fp_conn* c) noexcept nogil:
    preface_fail(w, c, R_PROXY_ERROR if c.preface_proxy else R_SNI_ERROR)


cdef ssize_t preface_peek(fp_worker* w, fp_conn* c, void* buf, size_t size,
                          int failure) noexcept nogil:
    """Bytes waiting from the client (>0), or 0 after closing it or to wait. Waits
    (SIOCINQ, no copy) while fewer than c.preface_need bytes are there, unless the
    client has hung up: then what it sent is all it will."""
    cdef int queued = 0
    cdef ssize_t n
    if (c.preface_need > 0 and not c.cli.hup and ioctl(c.cli.fd, SIOCINQ, &queued) == 0
            and <size_t>queued < c.preface_need):
        return 0
    n = recv(c.cli.fd, buf, size, MSG_PEEK)
    if n > 0:
        return n
    if n < 0 and errno == EAGAIN:
        c.cli.readable = False
    else:
        preface_fail(w, c, failure)     # gone, or reset, before it said enough
    return 0


cdef int preface_read_proxy(fp_worker* w, fp_conn* c) noexcept nogil:
    """1: header read (and taken off the socket); 0: wait, or closed."""
    cdef uint8_t buf[PP_MAX]
    cdef sockaddr_storage src, dst
    cdef bint carried
    cdef int length
    cdef ssize_t n = preface_peek(w, c, buf, PP_MAX, R_PROXY_ERROR)
    if n == 0:
        return 0
    length = proxy_parse(buf, <size_t>n, &src, &dst, &carried)
    if length == PP_NEED_MORE and not c.cli.hup:
        c.preface_need = <uint32_t>proxy_need(buf, <size_t>n)
        return 0                        # the rest raises a new edge
    if length <= 0 or recv(c.cli.fd, buf, length, 0) != length:
        preface_fail(w, c, R_PROXY_ERROR)
        return 0
    if carried:
        memcpy(&c.peer, &src, sizeof(sockaddr_storage))
        memcpy(&c.local, &dst, sizeof(sockaddr_storage))
    c.preface_proxy = False
    c.preface_need = 0                  # the ClientHello starts afresh
    return 1


cdef int preface_read_hello(fp_worker* w, fp_conn* c) noexcept nogil:
    """The app the ClientHello's server name goes to; -1: wait, or closed."""
    cdef fp_chan* ch = &c.up
    cdef size_t cap
    cdef uint8_t* name = NULL
    cdef size_t name_len = 0, want = 0
    cdef bint ended = False
    cdef int rc, app = -1
    cdef fp_sni* now
    cdef ssize_t n
    if chan_acquire(w, ch, False) < 0:
        preface_fail(w, c, R_SNI_ERROR)     # out of memory
        return -1
    cap = SNI_MAX if SNI_MAX < ch.buf_size else ch.buf_size
    # Edge-triggered: read until the socket is empty (or the buffer full).
    while ch.len < cap:
        n = recv(c.cli.fd, ch.buf + ch.len, cap - ch.len, 0)
        if n > 0:
            ch.len += n
        elif n == 0:
            ended = True                    # its FIN: what we have is all
            break
        elif errno == EAGAIN:
            c.cli.readable = False
            break
        else:
            preface_fail(w, c, R_SNI_ERROR)  # reset before it said enough
            return -1
    if ch.len < cap and not ended and ch.len < c.preface_need:
        return -1                           # not enough yet to tell more
    rc = sni_parse(<uint8_t*>ch.buf, ch.len, w.hello, &name, &name_len, &want)
    if rc == SNI_NEED_MORE and not ended and ch.len < cap:
        c.preface_need = <uint32_t>want
        return -1
    if rc != SNI_FOUND and rc != SNI_ABSENT:
        preface_fail(w, c, R_SNI_ERROR)
        return -1
    # The port's table in force now, not c.sni, the one at accept: since then a
    # reload may have removed an app it names and another have taken its id. Read
    # in this event batch, its ids are those of apps[] (Routes hands a removed
    # app's id on only once every worker has finished the batch it was in).
    now = sni_get(w.relay, c.port)
    if now != NULL:
        app = sni_lookup(now, name, name_len)
        sni_decref(now)
    if app < 0:
        preface_fail(w, c, R_SNI_UNMATCHED)
    return app


cdef bint preface_route(fp_worker* w, fp_conn* c, int app) noexcept nogil:
    """Hand a client routed by name over to its app: counters, route, limits."""
    cdef fp_route* rt = route_get(w.relay, app)
    cdef fp_stats* app_st
    if rt == NULL:
        preface_fail(w, c, R_SNI_UNMATCHED)    # the app went away in a reload
        return False
    sni_decref(c.sni)
    c.sni = NULL
    app_st = stats_slot(w.relay, rt.app_slot)
    fp_add_i64(&c.app_st.active, -1)
    fp_add_i64(&app_st.active, 1)
    c.app_st = app_st
    c.app_slot = rt.app_slot
    c.route = rt
    c.idle_timeout_ms = rt.idle_timeout_ms
    if rt.max_conns > 0 and fp_load_i64(&app_st.active) > rt.max_conns:
        fp_add_u64(&app_st.rejected, 1)
        c.result = R_REJECTED
        conn_close(w, c)
        return False
    if not admit_at_accept(w, rt, app_st, &c.peer, False):
        c.result = R_REJECTED
        conn_close(w, c)
        return False
    fp_add_u64(&app_st.connections, 1)
    return True


cdef bint preface_reroute(fp_worker* w, fp_conn* c) noexcept nogil:
    """A client of a port one app owns has sent its PROXY header: it goes by the
    port's route in force now. The one taken at accept may be an older version of
    that app's (replaced), or of an app a reload removed (the client is closed).
    The app slot tells the same app: no other can have it while we count in it."""
    cdef fp_route* rt = route_get(w.relay, fp_load_int(&w.relay.port_app[c.port]))
    if rt == NULL or rt.app_slot != c.app_slot:
        if rt != NULL:
            route_decref(rt)
        fp_add_u64(&c.app_st.no_target, 1)
        c.result = R_NO_TARGET
        conn_close(w, c)
        return False
    route_decref(c.route)
    c.route = rt
    c.idle_timeout_ms = rt.idle_timeout_ms
    return True


cdef void preface_step(fp_worker* w, fp_conn* c) noexcept nogil:
    """The client sent something (or went away): read on, and once all is there,
    route and connect."""
    cdef int app
    if c.preface_proxy and not preface_read_proxy(w, c):
        return
    if c.sni != NULL:
        app = preface_read_hello(w, c)
        if app < 0 or not preface_route(w, c, app):
            return
    elif not preface_reroute(w, c) or not admit_claimed_source(w, c):
        return
    preface_release(c)
    # The bytes after the preface may wait in the socket; no new edge will say so.
    c.cli.readable = True
    conn_start(w, c)


cdef void conn_start(fp_worker* w, fp_conn* c) noexcept nogil:
    """The client's address and app are known: apply the per-source limit, pick
    a target and connect."""
    c.state = ST_NEW
    if not admit_source(w, c):
        return
    tune_socket(c.route, c.cli.fd)  # TcpKeepalive / TcpUserTimeout, handshake included
    if c.route.tls != NULL:
        tls_accept_begin(w, c)      # its handshake first (tls.pxi), then on below
        return
    conn_connect_first(w, c)


cdef void conn_connect_first(fp_worker* w, fp_conn* c) noexcept nogil:
    cdef fp_route* rt = c.route
    c.state = ST_NEW
    c.start_idx = pick_first(w, rt, c)
    if c.start_idx == PICK_SATURATED:
        limits_saturated(w, c)
        return
    if c.start_idx < 0:
        fp_add_u64(&c.app_st.no_target, 1)
        c.result = R_NO_TARGET
        conn_close(w, c)
        return
    conn_connect_next(w, c)


cdef void accept_by_name(fp_worker* w, int fd, sockaddr_storage* peer,
                         sockaddr_storage* local, int port) noexcept nogil:
    """A client of a port shared by apps with ServerNames: its app is known once
    its ClientHello is in. Until then it counts against the table's count_slot."""
    cdef fp_sni* t = sni_get(w.relay, port)
    cdef socklen_t llen = sizeof(sockaddr_storage)
    cdef fp_conn* c
    if t == NULL:
        close_socket(w, fd)
        return
    if t.need_local and local.ss_family == 0:
        getsockname(fd, <sockaddr*>local, &llen)
    if t.accept_proxy and not sni_trusts_sender(w, t, peer):
        sni_decref(t)
        close_socket(w, fd)
        return
    c = conn_new(w, fd)
    if c == NULL:
        sni_decref(t)
        close_socket(w, fd)
        return
    memcpy(&c.peer, peer, sizeof(sockaddr_storage))
    memcpy(&c.local, local, sizeof(sockaddr_storage))
    c.port = port
    c.sni = t
    c.app_st = stats_slot(w.relay, t.count_slot)
    fp_add_i64(&c.app_st.active, 1)
    if register_side(w, &c.cli) < 0:
        conn_close(w, c)
        return
    preface_begin(w, c, t.accept_proxy)


cdef void conn_finish(fp_worker* w, fp_conn* c) noexcept nogil:
    """What conn_close owes the features of this file and its neighbours."""
    alog_conn(w, c)
    outlier_look(w, c, True)
    persource_release(c)
    preface_release(c)
    tls_release(c)
    if c.sni != NULL:
        sni_decref(c.sni)
        c.sni = NULL
