# Per-target connection limits, as Fly's proxy has them: MaxConnections is hard
# (never a connection above it), SoftLimit is a preference (a target at its soft
# limit gets new clients only while every target is at its own). Applied to the
# eligible set before the balancing mode chooses, so every mode honours them.
# When every target is at its hard limit the client waits up to QueueTimeout in
# ST_QUEUED, looking again every tick, then is closed.
#
# The hard limit is exact across workers: a connect claims its place in the
# target's active count with one atomic add (target_claim) before it starts, and
# gives it back if it was over.

cdef enum:
    PICK_SATURATED = -2         # pick_first: targets are there, all at their hard limit


cdef inline bint at_hard_limit(fp_relay* r, fp_target* t) noexcept nogil:
    return t.max_conns > 0 and target_active(r, t) >= t.max_conns


cdef int limits_filter(fp_relay* r, fp_route* rt, uint8_t* marks) noexcept nogil:
    """Drop the targets at their hard limit from marks, then those at their soft
    limit unless every one left is; returns how many are left."""
    cdef int i, left = 0, under_soft = 0
    cdef int64_t active
    cdef fp_target* t
    for i in range(rt.ntargets):
        if not marks[i]:
            continue
        t = &rt.targets[i]
        active = target_active(r, t)
        if t.max_conns > 0 and active >= t.max_conns:
            marks[i] = 0
            fp_add_u64(&stats_slot(r, t.slot).saturated_hard, 1)
            continue
        left += 1
        if t.soft_limit == 0 or active < t.soft_limit:
            under_soft += 1
    if under_soft == 0 or under_soft == left:
        return left
    for i in range(rt.ntargets):
        t = &rt.targets[i]
        if marks[i] and t.soft_limit > 0 and target_active(r, t) >= t.soft_limit:
            marks[i] = 0
            fp_add_u64(&stats_slot(r, t.slot).saturated_soft, 1)
    return under_soft


cdef inline bint target_claim(fp_relay* r, fp_target* t) noexcept nogil:
    """Count a connect in the target's active connections, unless that would take
    it over its hard limit."""
    cdef fp_stats* st = stats_slot(r, t.slot)
    if t.max_conns == 0:
        fp_add_i64(&st.active, 1)
        return True
    if fp_fetch_add_i64(&st.active, 1) >= t.max_conns:
        fp_add_i64(&st.active, -1)
        fp_add_u64(&st.saturated_hard, 1)
        return False
    return True


cdef inline void target_unclaim(fp_relay* r, fp_target* t) noexcept nogil:
    fp_add_i64(&stats_slot(r, t.slot).active, -1)


cdef void limits_saturated(fp_worker* w, fp_conn* c) noexcept nogil:
    """No target under its hard limit for a new client: wait, or close it."""
    if c.state != ST_QUEUED:
        if c.route.queue_timeout_ms > 0:
            fp_add_u64(&c.app_st.queued, 1)
            c.state = ST_QUEUED
            c.deadline_ms = w.now_ms + c.route.queue_timeout_ms
            timer_set(w, c, w.now_ms + TICK_MS)
            return
    elif w.now_ms < c.deadline_ms:
        return                  # the timer looks again next tick
    fp_add_u64(&c.app_st.rejected_saturated, 1)
    c.result = R_REJECTED
    conn_close(w, c)


cdef void queue_retry(fp_worker* w, fp_conn* c) noexcept nogil:
    """A queued client's tick: a target may have room now."""
    cdef int idx = pick_first(w, c.route, c)
    if idx == PICK_SATURATED:
        limits_saturated(w, c)
        return
    c.state = ST_NEW
    if idx < 0:
        fp_add_u64(&c.app_st.no_target, 1)
        c.result = R_NO_TARGET
        conn_close(w, c)
        return
    c.start_idx = idx
    c.tries = 0
    conn_connect_next(w, c)
