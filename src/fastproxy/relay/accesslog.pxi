# Access log: when a connection ends, its worker writes one fixed-size record into
# its own ring; a Python thread drains the rings (Relay.drain_access_log) and
# writes the JSON lines. No lock, no syscall, never a wait: a full ring drops the
# record and counts it.

cdef enum AccessResult:
    R_OK = 0
    R_RESET = 1
    R_NO_TARGET = 2
    R_CONNECT_TIMEOUT = 3
    R_REJECTED = 4
    R_IDLE_TIMEOUT = 5
    R_PROXY_ERROR = 6
    R_SNI_UNMATCHED = 7
    R_SNI_ERROR = 8
    R_LOCAL_ERROR = 9
    R_SHUTDOWN = 10
    R_MAX_DURATION = 11
    R_TARGET_DOWN = 12
    R_TLS_TIMEOUT = 13      # tls.pxi: no complete handshake in time
    R_TLS_ERROR = 14        # a handshake that failed (not TLS, nothing in common...)
    R_TLS_CLOSED = 15       # the client left during its handshake
    R_TLS_TARGET = 16       # reencrypt: the target's handshake or certificate failed

cdef enum:
    NO_SLOT = 0xffffffff


cdef fp_alog_rec* alog_claim(fp_worker* w) noexcept nogil:
    """The next free record of the worker's ring, or NULL (log off, or ring full)."""
    cdef fp_alog* a = <fp_alog*>fp_load_ptr(<void**>&w.alog)
    cdef timespec ts
    cdef fp_alog_rec* rec
    if a == NULL or not fp_load_int(&w.relay.alog_on):
        return NULL
    if a.head - fp_load_acq_u64(&a.tail) >= ALOG_SLOTS:
        fp_add_u64(&a.dropped, 1)
        return NULL
    rec = &a.recs[a.head % ALOG_SLOTS]
    clock_gettime(CLOCK_REALTIME, &ts)      # vDSO: no syscall
    rec.time_ns = <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
    rec.tls_version = 0
    return rec


cdef inline void alog_publish(fp_worker* w) noexcept nogil:
    fp_store_rel_u64(&w.alog.head, w.alog.head + 1)


cdef void alog_client(fp_alog_rec* rec, sockaddr_storage* ss) noexcept nogil:
    cdef sockaddr_in v4
    cdef sockaddr_in6* a6 = <sockaddr_in6*>ss
    if unmap_v4(ss, &v4):
        rec.family = AF_INET
        rec.client_port = ntohs(v4.sin_port)
        memcpy(rec.client_addr, &v4.sin_addr, 4)
    else:
        rec.family = AF_INET6
        rec.client_port = ntohs(a6.sin6_port)
        memcpy(rec.client_addr, &a6.sin6_addr, 16)


cdef void alog_conn(fp_worker* w, fp_conn* c) noexcept nogil:
    cdef fp_alog_rec* rec = alog_claim(w)
    if rec == NULL:
        return
    rec.duration_ms = w.now_ms - c.start_ms
    rec.bytes_in = c.bytes_in
    rec.bytes_out = c.bytes_out
    rec.app_slot = NO_SLOT if c.sni != NULL else c.app_slot     # routed by name: not yet
    rec.tgt_slot = c.tgt_slot if c.attempts > 0 else NO_SLOT
    rec.port = c.port
    rec.result = c.result
    if rec.result == R_OK and c.state != ST_RELAYING:
        rec.result = R_RESET        # the client left before a target took it
    rec.attempts = c.attempts
    tls_alog(rec, c)
    alog_client(rec, &c.peer)
    alog_publish(w)


cdef void alog_rejected(fp_worker* w, sockaddr_storage* peer, int port,
                        uint32_t app_slot) noexcept nogil:
    """A client turned away before it had a connection (MaxConnections)."""
    cdef fp_alog_rec* rec = alog_claim(w)
    if rec == NULL:
        return
    rec.duration_ms = 0
    rec.bytes_in = rec.bytes_out = 0
    rec.app_slot = app_slot
    rec.tgt_slot = NO_SLOT
    rec.port = port
    rec.result = R_REJECTED
    rec.attempts = 0
    alog_client(rec, peer)
    alog_publish(w)
