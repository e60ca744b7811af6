# Target selection. The orchestrator decides which targets are eligible (their
# state); this only carries out the configured algorithm over them, per connection,
# without the GIL. Every policy honours the targets' weights. Failover walks the
# ring onwards from the first pick, so every target is tried at most once per client.

cdef inline bint target_eligible(fp_target* t, int tier) noexcept nogil:
    if t.addrlen == 0:
        return False
    cdef int state = fp_load_int(&t.state)
    if tier == TIER_PANIC:
        return state == T_UP or state == T_DOWN
    return state == T_UP and t.backup == (tier == TIER_BACKUP)


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


cdef int pick_first(fp_worker* w, fp_route* rt, fp_conn* c) noexcept nogil:
    """The policy's choice for a new client, or -1 when no target can be tried,
    PICK_SATURATED when every one that could is at its hard limit (limits.pxi).

    Target states change under our feet (health checks, operators): they are read
    once into a snapshot, so counting and choosing agree."""
    cdef uint8_t local[SNAPSHOT_MAX]
    cdef uint8_t* marks = local
    cdef int n = rt.ntargets, i, up = 0, best = -1, tier
    cdef uint64_t h
    if n == 0:
        return -1
    if n > SNAPSHOT_MAX:
        marks = <uint8_t*>malloc(n)
        if marks == NULL:
            return -1
    # Primaries that are up; else backups that are up; else anything not taken
    # out by an operator (panic: the checks may be wrong, trying beats refusing;
    # unless the app says Panic: false, for targets that must never get traffic down).
    for tier in range(TIER_PRIMARY, (TIER_PANIC if rt.panic else TIER_PANIC - 1) + 1):
        up = 0
        for i in range(n):
            marks[i] = target_eligible(&rt.targets[i], tier)
            up += marks[i]
        if up > 0:
            break
    c.tier = tier
    if up > 0 and rt.limits:
        up = limits_filter(w.relay, rt, marks)
        if up == 0:
            best = PICK_SATURATED
    if up > 0:
        if tier == TIER_PANIC:
            fp_add_u64(&c.app_st.panic, 1)
        h = addr_hash(&c.peer) if rt.balance == BAL_SOURCE_HASH or rt.balance == BAL_MAGLEV else 0
        if rt.slow_start_ms > 0 and up > 1:
            slow_start_thin(w, rt, marks, up, h)
        best = pick_among(w, rt, marks, h)
    if marks != local:
        free(marks)
    return best


cdef inline bint lighter(fp_relay* r, fp_target* a, fp_target* b) noexcept nogil:
    """a carries fewer connections per unit of weight than b."""
    return target_active(r, a) * b.weight < target_active(r, b) * a.weight


cdef int weighted_random(fp_worker* w, fp_route* rt, const uint8_t* marks,
                         uint64_t total) noexcept nogil:
    cdef uint64_t x = next_random(w) % total
    cdef int i
    for i in range(rt.ntargets):
        if marks[i]:
            if x < rt.targets[i].weight:
                return i
            x -= rt.targets[i].weight
    return -1


cdef double rendezvous_score(uint64_t h, fp_target* t) noexcept nogil:
    """Weighted rendezvous hashing: -weight / ln(u), u uniform in (0, 1) from the
    client and the target's slot. The highest score wins, and each target wins in
    proportion to its weight; equal weights order targets as the plain hash does."""
    cdef uint64_t x = mix64(h ^ (<uint64_t>t.slot * 0x9e3779b97f4a7c15ULL))
    cdef double u = (<double>(x >> 11) + 0.5) * (1.0 / 9007199254740992.0)   # 2**-53
    return -<double>t.weight / log(u)


cdef int pick_round_robin(fp_route* rt, const uint8_t* marks) noexcept nogil:
    """The next eligible entry of the weighted cycle. Ineligible entries are
    consumed, not handed to the next target, so the others keep their ratios.
    Some entry is eligible (the caller saw one), so the scan ends within a cycle."""
    cdef uint32_t cur = fp_load_u32(&rt.rr), pos, i
    while True:
        pos = cur % rt.nwrr
        for i in range(rt.nwrr):
            if marks[rt.wrr[pos]]:
                break
            pos = pos + 1 if pos + 1 < rt.nwrr else 0
        if fp_cas_u32(&rt.rr, &cur, pos + 1 if pos + 1 < rt.nwrr else 0):
            return <int>rt.wrr[pos]
        # another worker moved the cursor meanwhile: cur now holds its value


cdef int pick_among(fp_worker* w, fp_route* rt, const uint8_t* marks,
                    uint64_t client_hash) noexcept nogil:
    cdef int n = rt.ntargets, i, j, k, best = -1, a, b
    cdef uint64_t total = 0
    cdef double score, best_score = 0
    if rt.balance == BAL_LEAST_CONN:
        # Fewest connections per unit of weight. The scan starts at a rotating
        # offset so ties spread round robin.
        i = fp_next_u32(&rt.rr) % n
        for j in range(n):
            k = (i + j) % n
            if marks[k] and (best < 0 or lighter(w.relay, &rt.targets[k], &rt.targets[best])):
                best = k
        return best
    if rt.balance == BAL_RANDOM:
        # Power of two choices: two targets drawn in proportion to their weights,
        # the lighter one (per unit of weight) wins.
        for i in range(n):
            if marks[i]:
                total += rt.targets[i].weight
        a = weighted_random(w, rt, marks, total)
        b = weighted_random(w, rt, marks, total)
        if lighter(w.relay, &rt.targets[b], &rt.targets[a]):
            return b
        return a
    if rt.balance == BAL_SOURCE_HASH:
        # Keyed by the target's counter slot, which is stable across reloads: a
        # client stays put unless its own target goes away.
        for i in range(n):
            if marks[i]:
                score = rendezvous_score(client_hash, &rt.targets[i])
                if best < 0 or score > best_score:
                    best = i
                    best_score = score
        return best
    if rt.balance == BAL_MAGLEV:
        return maglev_pick(rt, marks, client_hash)
    return pick_round_robin(rt, marks)


cdef int pick_next(fp_route* rt, fp_conn* c) noexcept nogil:
    """The next target to try for this client: the first pick, then onwards round
    the ring, skipping ineligible ones. -1 when all have been tried."""
    cdef int j
    while True:
        while c.tries < rt.ntargets:
            j = (c.start_idx + c.tries) % rt.ntargets
            c.tries += 1
            if target_eligible(&rt.targets[j], c.tier) and not at_hard_limit(rt.relay, &rt.targets[j]):
                return j
        if c.tier != TIER_PRIMARY:
            return -1
        # Every primary refused this client, whatever the checks still say: a
        # primary that cannot be reached is not up, so the backups are next.
        c.tier = TIER_BACKUP
        c.tries = 0
