# Admission control (SPEC §12): who may connect (Allow / Deny), who may send a
# PROXY header (AcceptProxyProtocol's trusted senders), how fast new clients may
# come (MaxConnectionRate, MaxConnectionRatePerSource: token buckets whose burst
# is the rate), and how many may sit in their preface (MaxConnectionsInPreface).
# Every check runs at accept, before the client costs more than its descriptor;
# with bpf steering, Allow / Deny are also enforced in bpf/steer.c, so a refused
# client never reaches accept at all.

# A CIDR list: addresses as 128 bits (IPv4 as ::ffff:a.b.c.d/96+len), grouped by
# prefix length and sorted within each group, so a lookup is one binary search
# per distinct length: a 10,000-entry deny list costs ~14 compares per length.
ctypedef struct fp_net:
    uint64_t hi
    uint64_t lo

ctypedef struct fp_cidrs:
    int n
    int nlens
    int lens[129]               # distinct prefix lengths
    int starts[130]             # nets[starts[i]:starts[i+1]] have length lens[i]
    fp_net* nets

cdef struct fp_acl:
    fp_cidrs allow              # n == 0: every client not denied
    fp_cidrs deny
    fp_cidrs senders            # trusted PROXY senders; n == 0: any sender


cdef inline int net_cmp(uint64_t hi, uint64_t lo, fp_net* n) noexcept nogil:
    if hi != n.hi:
        return -1 if hi < n.hi else 1
    if lo != n.lo:
        return -1 if lo < n.lo else 1
    return 0


cdef bint cidrs_match(fp_cidrs* t, uint64_t hi, uint64_t lo) noexcept nogil:
    cdef int i, a, b, m, cmp
    cdef uint64_t h, l
    for i in range(t.nlens):
        h = hi
        l = lo
        mask128(&h, &l, t.lens[i])
        a = t.starts[i]
        b = t.starts[i + 1]
        while a < b:
            m = (a + b) >> 1
            cmp = net_cmp(h, l, &t.nets[m])
            if cmp == 0:
                return True
            if cmp < 0:
                b = m
            else:
                a = m + 1
    return False


cdef void acl_free(fp_acl* acl) noexcept nogil:
    if acl != NULL:
        free(acl.allow.nets)
        free(acl.deny.nets)
        free(acl.senders.nets)
        free(acl)


cdef int cidrs_fill(fp_cidrs* t, list nets) except -1:
    """nets: [(prefix length, hi, lo)], masked, 128-bit form."""
    cdef int i
    nets = sorted(set(nets))
    t.n = len(nets)
    t.nlens = 0
    t.nets = <fp_net*>calloc(max(1, t.n), sizeof(fp_net))
    if t.nets == NULL:
        raise MemoryError()
    for i, (plen, hi, lo) in enumerate(nets):
        if t.nlens == 0 or t.lens[t.nlens - 1] != plen:
            t.lens[t.nlens] = plen
            t.starts[t.nlens] = i
            t.nlens += 1
        t.nets[i].hi = hi
        t.nets[i].lo = lo
    t.starts[t.nlens] = t.n
    return 0


cdef fp_acl* acl_build(list allow, list deny, list senders) except? NULL:
    cdef fp_acl* acl
    if not (allow or deny or senders):
        return NULL
    acl = <fp_acl*>calloc(1, sizeof(fp_acl))
    if acl == NULL:
        raise MemoryError()
    try:
        cidrs_fill(&acl.allow, allow)
        cidrs_fill(&acl.deny, deny)
        cidrs_fill(&acl.senders, senders)
    except BaseException:
        acl_free(acl)
        raise
    return acl


cdef bint acl_refuses(fp_acl* acl, sockaddr_storage* ss) noexcept nogil:
    """Not in Allow (when there is one), or in Deny."""
    cdef uint64_t hi, lo
    if acl == NULL or (acl.allow.n == 0 and acl.deny.n == 0):
        return False
    addr128(ss, &hi, &lo)
    if acl.allow.n and not cidrs_match(&acl.allow, hi, lo):
        return True
    return acl.deny.n and cidrs_match(&acl.deny, hi, lo)


cdef bint acl_trusts_sender(fp_acl* acl, sockaddr_storage* ss) noexcept nogil:
    cdef uint64_t hi, lo
    if acl == NULL or acl.senders.n == 0:
        return True
    addr128(ss, &hi, &lo)
    return cidrs_match(&acl.senders, hi, lo)


# -- token buckets -----------------------------------------------------------------

cdef inline bint bucket_take(fp_bucket* b, double rate, int64_t now_ms) noexcept nogil:
    """One token if there is one; burst = rate (at least one). A bucket never
    used (last_ms 0) starts full."""
    cdef double burst = rate if rate > 1.0 else 1.0
    if b.last_ms == 0:
        b.tokens = burst
        b.last_ms = now_ms
    elif now_ms > b.last_ms:    # workers' clocks are read per event batch: never go back
        b.tokens += (now_ms - b.last_ms) * rate / 1000.0
        if b.tokens > burst:
            b.tokens = burst
        b.last_ms = now_ms
    if b.tokens < 1.0:
        return False
    b.tokens -= 1.0
    return True


cdef bint rate_admits(fp_worker* w, fp_persource* ps, fp_stats* app_st,
                      sockaddr_storage* peer, bint app_rate=True) noexcept nogil:
    """MaxConnectionRate (unless app_rate is False: already taken), then
    MaxConnectionRatePerSource; counts the refusal."""
    cdef double rate = ps.rate if app_rate else 0.0
    cdef double source_rate = ps.source_rate
    cdef fp_bucket* buckets = <fp_bucket*>fp_load_ptr(<void**>&ps.buckets)
    cdef bint ok = True
    cdef int b
    if rate <= 0 and (source_rate <= 0 or buckets == NULL):
        return True
    pthread_mutex_lock(&ps.lock)
    if rate > 0 and not bucket_take(&ps.app_bucket, rate, w.now_ms):
        fp_add_u64(&app_st.rejected_rate, 1)
        ok = False
    elif source_rate > 0 and buckets != NULL:
        b = source_bucket(ps, peer)
        if not bucket_take(&buckets[b], source_rate, w.now_ms):
            fp_add_u64(&app_st.rejected_source_rate, 1)
            ok = False
    pthread_mutex_unlock(&ps.lock)
    return ok


# -- the checks, in the order a client meets them -------------------------------------

cdef bint admit_at_accept(fp_worker* w, fp_route* rt, fp_stats* app_st,
                          sockaddr_storage* peer, bint at_accept) noexcept nogil:
    """Allow / Deny, the PROXY sender's trust, the rates: False (counted) to close
    the client at once, before any target hears of it. On a port shared by name
    the app is known only after the ClientHello (at_accept False): the sender was
    checked at accept then (sni_trusts_sender), and peer may be a claimed source."""
    if acl_refuses(rt.acl, peer):
        fp_add_u64(&app_st.rejected_deny, 1)
        return False
    if at_accept and rt.accept_proxy and not acl_trusts_sender(rt.acl, peer):
        fp_add_u64(&app_st.rejected_untrusted, 1)
        return False
    # A trusted sender's clients are rated by the source its header names.
    if rt.accept_proxy and rt.acl != NULL and rt.acl.senders.n:
        if rt.persource.rate > 0:
            return rate_admits_app(w, rt.persource, app_st)
        return True
    return rate_admits(w, rt.persource, app_st, peer)


cdef bint sni_trusts_sender(fp_worker* w, fp_sni* t, sockaddr_storage* peer) noexcept nogil:
    """A port shared by name takes PROXY headers from the senders its apps trust
    (config.py makes them agree); a client from elsewhere is closed and counted."""
    cdef fp_route* rt = route_get(w.relay, t.count_app)
    cdef bint ok = True
    if rt != NULL:
        ok = acl_trusts_sender(rt.acl, peer)
        route_decref(rt)
    if not ok:
        fp_add_u64(&stats_slot(w.relay, t.count_slot).rejected_untrusted, 1)
    return ok


cdef bint rate_admits_app(fp_worker* w, fp_persource* ps, fp_stats* app_st) noexcept nogil:
    cdef bint ok
    pthread_mutex_lock(&ps.lock)
    ok = bucket_take(&ps.app_bucket, ps.rate, w.now_ms)
    pthread_mutex_unlock(&ps.lock)
    if not ok:
        fp_add_u64(&app_st.rejected_rate, 1)
    return ok


cdef bint admit_source(fp_worker* w, fp_conn* c) noexcept nogil:
    """Count the client against its source (MaxConnectionsPerSource); False: it
    was closed. Counted once, from accept where its address is known then."""
    if c.persource != NULL:
        return True
    if not persource_admit(c, c.route.persource):
        fp_add_u64(&c.app_st.rejected_per_source, 1)
        c.result = R_REJECTED
        conn_close(w, c)
        return False
    return True


cdef bint admit_claimed_source(fp_worker* w, fp_conn* c) noexcept nogil:
    """A PROXY header named the client: Deny / Allow and the per-source limits
    apply to that address now (the sender's count, with `true`, moves to it)."""
    cdef fp_route* rt = c.route
    persource_release(c)
    if acl_refuses(rt.acl, &c.peer):
        fp_add_u64(&c.app_st.rejected_deny, 1)
    elif rt.persource.source_rate > 0 and rt.acl != NULL and rt.acl.senders.n \
            and not rate_admits(w, rt.persource, c.app_st, &c.peer, False):
        pass
    else:
        return admit_source(w, c)
    c.result = R_REJECTED
    conn_close(w, c)
    return False


cdef bint admit_into_preface(fp_worker* w, fp_conn* c) noexcept nogil:
    """A client that owes a PROXY header. From any sender (`true`) it counts
    against its own address from now; from a trusted one, against the source its
    header names (admit_claimed_source). Either way it counts against
    MaxConnectionsInPreface: False (counted, closed) when the app has as many
    clients still sending their preface."""
    cdef fp_persource* ps = c.route.persource
    if (c.route.acl == NULL or c.route.acl.senders.n == 0) and not admit_source(w, c):
        return False
    if fp_add_fetch_int(&ps.in_preface, 1) > ps.max_preface:
        fp_add_fetch_int(&ps.in_preface, -1)
        fp_add_u64(&c.app_st.rejected_preface, 1)
        c.result = R_REJECTED
        conn_close(w, c)
        return False
    fp_incref(&ps.refcnt)
    c.prefacing = ps
    return True


cdef void preface_release(fp_conn* c) noexcept nogil:
    if c.prefacing != NULL:
        fp_add_fetch_int(&c.prefacing.in_preface, -1)
        persource_decref(c.prefacing)
        c.prefacing = NULL
