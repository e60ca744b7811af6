# Balance: maglev (Eisenbud et al., NSDI 2016): a lookup table of M entries (a fixed
# prime, 65521: 256 KiB per maglev app) filled from each target's own permutation of the
# slots, in proportion to its weight. A client's address hash picks an entry. The
# permutations come from the target's address (Python passes a stable 64-bit key:
# not its counter slot, which differs between instances) and the table is filled in
# key order, so every instance with the same targets builds the same table, and the
# client hash (addr_hash) has no per-process key: the same client goes to the same
# target everywhere. Adding or removing a target moves about 1/N of the clients.
# A target that cannot be picked now (down, full, ramping) passes its clients on to
# the next entries of the table, the same way on every instance; the table itself
# only changes when the targets do.

cdef enum:
    MAGLEV_M = 65521            # table entries (a prime): fixed, because a table of
                                # another size reshuffles every client. 100 x the
                                # targets or more keeps shares within a few percent;
    MAGLEV_M_LARGE = 131071     # above 655 targets, this one


cdef int build_maglev(fp_route* rt, const uint64_t* keys) noexcept nogil:
    """Fill rt.wrr with the table (rt.nwrr entries). keys: one per target."""
    cdef int n = rt.ntargets, i, j, k
    cdef uint32_t m = MAGLEV_M if n <= MAGLEV_M // 100 else MAGLEV_M_LARGE
    cdef uint32_t filled = 0, c, w_max = 1
    cdef uint32_t* offset = <uint32_t*>malloc(n * sizeof(uint32_t))
    cdef uint32_t* skip = <uint32_t*>malloc(n * sizeof(uint32_t))
    cdef uint32_t* nxt = <uint32_t*>calloc(n, sizeof(uint32_t))
    cdef double* credit = <double*>calloc(n, sizeof(double))
    cdef int* order = <int*>malloc(n * sizeof(int))
    cdef uint32_t* table
    cdef uint32_t empty = <uint32_t>0xffffffffU
    table = <uint32_t*>malloc(m * sizeof(uint32_t))
    if offset == NULL or skip == NULL or nxt == NULL or credit == NULL or order == NULL \
            or table == NULL:
        free(offset); free(skip); free(nxt); free(credit); free(order); free(table)
        return -1
    for i in range(n):
        offset[i] = <uint32_t>(mix64(keys[i]) % m)
        skip[i] = <uint32_t>(mix64(keys[i] ^ 0x5bd1e9955bd1e995ULL) % (m - 1)) + 1
        w_max = max(w_max, rt.targets[i].weight)
        order[i] = i
    # Fill in key order (insertion sort: n is small), not config order.
    for i in range(1, n):
        j = i
        while j > 0 and keys[order[j - 1]] > keys[order[j]]:
            order[j - 1], order[j] = order[j], order[j - 1]
            j -= 1
    for c in range(m):
        table[c] = empty
    while filled < m:
        for k in range(n):
            i = order[k]
            credit[i] += <double>rt.targets[i].weight / w_max
            while credit[i] >= 1.0 and filled < m:
                credit[i] -= 1.0
                c = <uint32_t>((offset[i] + <uint64_t>nxt[i] * skip[i]) % m)
                while table[c] != empty:
                    nxt[i] += 1
                    c = <uint32_t>((offset[i] + <uint64_t>nxt[i] * skip[i]) % m)
                table[c] = i
                nxt[i] += 1
                filled += 1
    free(offset); free(skip); free(nxt); free(credit); free(order)
    rt.wrr = table
    rt.nwrr = m
    return 0


cdef int maglev_pick(fp_route* rt, const uint8_t* marks, uint64_t client_hash) noexcept nogil:
    """The client's entry, or the first one after it whose target can be picked
    (some target can: the caller saw one, and every target has entries)."""
    cdef uint32_t pos = <uint32_t>(client_hash % rt.nwrr), i
    for i in range(rt.nwrr):
        if marks[rt.wrr[pos]]:
            return <int>rt.wrr[pos]
        pos = pos + 1 if pos + 1 < rt.nwrr else 0
    return -1


def maglev_for_tests(keys, weights, hashes):
    """The targets (indexes) a maglev route over targets with these keys and weights
    picks for client hashes, all targets up: what the movement figures measure."""
    cdef fp_route rt
    cdef uint64_t* k = <uint64_t*>malloc(max(1, len(keys)) * sizeof(uint64_t))
    cdef int i
    memset(&rt, 0, sizeof(rt))
    rt.ntargets = len(keys)
    rt.targets = <fp_target*>calloc(max(1, len(keys)), sizeof(fp_target))
    cdef uint8_t* marks = <uint8_t*>malloc(max(1, len(keys)))
    try:
        for i in range(rt.ntargets):
            k[i] = keys[i]
            rt.targets[i].weight = weights[i]
            marks[i] = 1
        if build_maglev(&rt, k) < 0:
            raise MemoryError()
        return [maglev_pick(&rt, marks, h) for h in hashes]
    finally:
        free(k)
        free(marks)
        free(rt.targets)
        free(rt.wrr)


def addr_hash_for_tests(str ip):
    """The relay's hash of a client address (source-hash, maglev)."""
    cdef sockaddr_storage ss
    cdef socklen_t length
    fill_sockaddr(&ss, &length, AF_INET6 if ":" in ip else AF_INET, ip.encode(), 0)
    return addr_hash(&ss)
