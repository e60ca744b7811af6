# Counter slots and per-app routes, shared between the Python thread (writer) and
# the workers (readers).

cdef inline fp_stats* stats_slot(fp_relay* r, uint32_t slot) noexcept nogil:
    return &r.chunks[slot // STATS_CHUNK][slot % STATS_CHUNK]


cdef void route_free(fp_route* rt) noexcept nogil:
    if rt.persource != NULL:
        persource_decref(rt.persource)
    acl_free(rt.acl)
    tls_ctx_decref(rt.tls)
    free(rt.targets)
    free(rt.wrr)
    free(rt)


cdef void route_claim_slots(fp_route* rt, int delta) noexcept nogil:
    """Count the route in (or out of) the slots it names. Going out is the last
    time a worker touches those slots through this route (release order), so once
    a slot counts no route and no connection, nothing can reach it any more."""
    cdef int i
    fp_add_int(&stats_slot(rt.relay, rt.app_slot).routes, delta)
    for i in range(rt.ntargets):
        fp_add_int(&stats_slot(rt.relay, rt.targets[i].slot).routes, delta)


cdef inline void route_decref(fp_route* rt) noexcept nogil:
    if fp_decref(&rt.refcnt) == 0:
        route_claim_slots(rt, -1)
        route_free(rt)


cdef fp_route* route_get(fp_relay* r, int app) noexcept nogil:
    """The app's current route with a reference held, or NULL. No lock: a route
    replaced meanwhile keeps the table's reference until every worker has finished
    the event batch it was in (Relay._retire), so the reference taken here is safe."""
    cdef fp_route* rt
    if app < 0 or app >= MAX_APPS:
        return NULL
    rt = <fp_route*>fp_load_ptr(<void**>&r.apps[app])
    if rt != NULL:
        fp_incref(&rt.refcnt)
    return rt


cdef fp_route* route_publish(fp_relay* r, int app, fp_route* rt) noexcept nogil:
    """Swap in a new route (or NULL), published with release semantics. Returns the
    old one, whose table reference the caller retires (Relay._retire)."""
    cdef fp_route* old
    pthread_mutex_lock(&r.lock)
    old = r.apps[app]
    fp_store_ptr(<void**>&r.apps[app], rt)
    pthread_mutex_unlock(&r.lock)
    return old


# -- PROXY protocol (haproxy.org/download/2.9/doc/proxy-protocol.txt) -------------

cdef bint unmap_v4(sockaddr_storage* ss, sockaddr_in* out) noexcept nogil:
    """An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d; the PROXY
    header should name it as IPv4."""
    cdef sockaddr_in6* a6
    cdef int i
    if ss.ss_family == AF_INET:
        memcpy(out, ss, sizeof(sockaddr_in))
        return True
    a6 = <sockaddr_in6*>ss
    for i in range(10):
        if a6.sin6_addr.s6_addr[i] != 0:
            return False
    if a6.sin6_addr.s6_addr[10] != 0xff or a6.sin6_addr.s6_addr[11] != 0xff:
        return False
    out.sin_family = AF_INET
    out.sin_port = a6.sin6_port
    memcpy(&out.sin_addr, &a6.sin6_addr.s6_addr[12], 4)
    return True


cdef int send_proxy_header(fp_conn* c, int version) noexcept nogil:
    """Sent once, right after the connect: a fresh socket's buffer always has
    room for it, so a short write means the target is gone."""
    cdef char hdr[1024]             # v2 with TLS TLVs: 52 + 258 + 258 + 8 + names
    cdef char src[INET6_ADDRSTRLEN]
    cdef char dst[INET6_ADDRSTRLEN]
    cdef sockaddr_in p4, l4
    cdef sockaddr_in6* p6 = <sockaddr_in6*>&c.peer
    cdef sockaddr_in6* l6 = <sockaddr_in6*>&c.local
    cdef bint v4 = unmap_v4(&c.peer, &p4) and unmap_v4(&c.local, &l4)
    cdef int n
    cdef unsigned char* b = <unsigned char*>hdr
    if version == 1:
        if v4:
            inet_ntop(AF_INET, &p4.sin_addr, src, sizeof(src))
            inet_ntop(AF_INET, &l4.sin_addr, dst, sizeof(dst))
            n = snprintf(hdr, sizeof(hdr), "PROXY TCP4 %s %s %u %u\r\n", src, dst,
                         ntohs(p4.sin_port), ntohs(l4.sin_port))
        else:
            inet_ntop(AF_INET6, &p6.sin6_addr, src, sizeof(src))
            inet_ntop(AF_INET6, &l6.sin6_addr, dst, sizeof(dst))
            n = snprintf(hdr, sizeof(hdr), "PROXY TCP6 %s %s %u %u\r\n", src, dst,
                         ntohs(p6.sin6_port), ntohs(l6.sin6_port))
    else:
        memcpy(hdr, b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a", 12)
        b[12] = 0x21                        # version 2, PROXY command
        if v4:
            b[13] = 0x11                    # TCP over IPv4
            b[14] = 0
            b[15] = 12
            memcpy(b + 16, &p4.sin_addr, 4)
            memcpy(b + 20, &l4.sin_addr, 4)
            memcpy(b + 24, &p4.sin_port, 2)
            memcpy(b + 26, &l4.sin_port, 2)
            n = 28
        else:
            b[13] = 0x21                    # TCP over IPv6
            b[14] = 0
            b[15] = 36
            memcpy(b + 16, &p6.sin6_addr, 16)
            memcpy(b + 32, &l6.sin6_addr, 16)
            memcpy(b + 48, &p6.sin6_port, 2)
            memcpy(b + 50, &l6.sin6_port, 2)
            n = 52
        n = <int>tls_proxy_tlvs(c, b, n, sizeof(hdr))
        b[14] = <unsigned char>((n - 16) >> 8)
        b[15] = <unsigned char>((n - 16) & 0xff)
    if send(c.srv.fd, hdr, n, MSG_NOSIGNAL) != n:
        return -1
    return 0
