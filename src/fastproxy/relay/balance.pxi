# Target selection. The orchestrator decides which targets are eligible (their
# state); this only carries out the configured algorithm over them, per connection,
# without the GIL. Failover walks the ring onwards from the first pick, so every
# target is tried at most once per client.

cdef inline bint target_eligible(fp_target* t, bint panic) noexcept nogil:
    if t.addrlen == 0:
        return False
    cdef int state = fp_load_int(&t.state)
    return state == T_UP or (panic and state == T_DOWN)


cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    # splitmix64 finaliser: cheap and well spread
    x ^= x >> 30
    x *= 0xbf58476d1ce4e5b9ULL
    x ^= x >> 27
    x *= 0x94d049bb133111ebULL
    x ^= x >> 31
    return x


cdef inline uint64_t next_random(fp_worker* w) noexcept nogil:
    w.rng += 0x9e3779b97f4a7c15ULL
    return mix64(w.rng)


cdef uint64_t addr_hash(sockaddr_storage* ss) noexcept nogil:
    """Hash of the client's IP address (not its port)."""
    cdef uint64_t h = 0
    cdef int i
    cdef sockaddr_in6* a6
    if ss.ss_family == AF_INET:
        return mix64((<sockaddr_in*>ss).sin_addr.s_addr)
    a6 = <sockaddr_in6*>ss
    for i in range(16):
        h = h * 131 + a6.sin6_addr.s6_addr[i]
    return mix64(h)


cdef inline int64_t target_active(fp_relay* r, fp_target* t) noexcept nogil:
    return fp_load_i64(&stats_slot(r, t.slot).active)


cdef enum:
    SNAPSHOT_MAX = 256     # targets whose states fit the on-stack snapshot


cdef int nth_marked(const uint8_t* marks, int n, int nth) noexcept nogil:
    cdef int i
    for i in range(n):
        if marks[i]:
            if nth == 0:
                return i
            nth -= 1
    return -1


cdef int pick_first(fp_worker* w, fp_route* rt, fp_conn* c) noexcept nogil:
    """The policy's choice for a new client, or -1 when no target can be tried.

    Target states change under our feet (health checks, operators): they are read
    once into a snapshot, so counting and choosing agree."""
    cdef uint8_t local[SNAPSHOT_MAX]
    cdef uint8_t* marks = local
    cdef int n = rt.ntargets, i, up = 0, best = -1
    if n == 0:
        return -1
    if n > SNAPSHOT_MAX:
        marks = <uint8_t*>malloc(n)
        if marks == NULL:
            return -1
    for i in range(n):
        marks[i] = target_eligible(&rt.targets[i], False)
        up += marks[i]
    c.panic = up == 0
    if c.panic:
        for i in range(n):
            marks[i] = target_eligible(&rt.targets[i], True)
            up += marks[i]
        if up > 0:
            fp_add_u64(&c.app_st.panic, 1)
    if up > 0:
        best = pick_among(w, rt, c, marks, up)
    if marks != local:
        free(marks)
    return best


cdef int pick_among(fp_worker* w, fp_route* rt, fp_conn* c, const uint8_t* marks,
                    int up) noexcept nogil:
    cdef int n = rt.ntargets, i, j, k, best = -1, a, b
    cdef int64_t load, best_load = 0
    cdef uint64_t score, best_score = 0, h
    if rt.balance == BAL_LEAST_CONN:
        # Start the scan at a rotating offset so ties spread round robin.
        i = fp_next_u32(&rt.rr) % n
        for j in range(n):
            k = (i + j) % n
            if marks[k]:
                load = target_active(w.relay, &rt.targets[k])
                if best < 0 or load < best_load:
                    best = k
                    best_load = load
        return best
    if rt.balance == BAL_RANDOM:
        # Power of two random choices: the less loaded of two random targets.
        a = nth_marked(marks, n, <int>(next_random(w) % <uint64_t>up))
        b = nth_marked(marks, n, <int>(next_random(w) % <uint64_t>up))
        if target_active(w.relay, &rt.targets[b]) < target_active(w.relay, &rt.targets[a]):
            return b
        return a
    if rt.balance == BAL_SOURCE_HASH:
        # Rendezvous hashing keyed by the target's counter slot, which is stable
        # across reloads: a client stays put unless its own target goes away.
        h = addr_hash(&c.peer)
        for i in range(n):
            if marks[i]:
                score = mix64(h ^ (<uint64_t>rt.targets[i].slot * 0x9e3779b97f4a7c15ULL))
                if best < 0 or score > best_score:
                    best = i
                    best_score = score
        return best
    # Round robin over the eligible targets only: counting the cursor over all of
    # them would give a down target's turns to its successor.
    return nth_marked(marks, n, <int>(fp_next_u32(&rt.rr) % <uint32_t>up))


cdef int pick_next(fp_route* rt, fp_conn* c) noexcept nogil:
    """The next target to try for this client: the first pick, then onwards round
    the ring, skipping ineligible ones. -1 when all have been tried."""
    cdef int j
    while c.tries < rt.ntargets:
        j = (c.start_idx + c.tries) % rt.ntargets
        c.tries += 1
        if target_eligible(&rt.targets[j], c.panic):
            return j
    return -1
