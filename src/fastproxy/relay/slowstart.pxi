# SlowStart: a target that came up (the orchestrator stores the moment in its
# counter slot, up_since_ms) takes a share of the clients it would normally get
# that grows from SLOW_START_FLOOR to all of it over the app's SlowStart. Done by
# thinning the eligible set before the balancing mode chooses, so every mode ramps:
# a ramping target stays eligible for a client with probability equal to its
# share. The draw is random per client, except where the mode hashes the client
# (source-hash): there it comes from the client's hash, so a client that moved
# onto the target stays there as the share grows.

cdef double SLOW_START_FLOOR = 0.1


cdef inline double slow_start_share(fp_relay* r, fp_route* rt, fp_target* t,
                                    int64_t now_ms) noexcept nogil:
    cdef int64_t since = fp_load_i64(&stats_slot(r, t.slot).up_since_ms)
    cdef double share
    if since == 0 or now_ms - since >= rt.slow_start_ms:
        return 1.0
    share = <double>(now_ms - since) / <double>rt.slow_start_ms
    return share if share > SLOW_START_FLOOR else SLOW_START_FLOOR


cdef int slow_start_thin(fp_worker* w, fp_route* rt, uint8_t* marks, int up,
                         uint64_t client_hash) noexcept nogil:
    """Drop ramping targets from marks by their share; never the last one left.
    Returns how many are left."""
    cdef int i, dropped = 0, left = up
    cdef double share, u
    cdef uint64_t x
    for i in range(rt.ntargets):
        if not marks[i]:
            continue
        share = slow_start_share(w.relay, rt, &rt.targets[i], w.now_ms)
        if share >= 1.0:
            continue
        if rt.balance == BAL_SOURCE_HASH or rt.balance == BAL_MAGLEV:
            x = mix64(client_hash ^ (<uint64_t>rt.targets[i].slot * 0xd6e8feb86659fd93ULL))
        else:
            x = next_random(w)
        u = <double>(x >> 11) * (1.0 / 9007199254740992.0)   # 2**-53
        if u >= share and left > 1:
            marks[i] = 0
            left -= 1
    return left
