# Connection timers on a hashed wheel of TICK_MS slots: connect and preface
# deadlines, idle timeouts, lifetimes (lifetime.pxi), queued clients (limits.pxi),
# and failing connections flushing a dead side's last bytes (conn_fail_flush,
# every tick).
# Each connection sits in at most one slot, for the earliest moment it needs a
# look. Activity costs no timer operation: it only stores last_active_ms, and the
# idle timer, when its slot comes round, either fires or moves the connection to
# its new due time. A tick costs the connections due in it, not all of them.

cdef void timer_del(fp_worker* w, fp_conn* c) noexcept nogil:
    if c.tslot < 0:
        return
    if c.tprev != NULL:
        c.tprev.tnext = c.tnext
    else:
        w.wheel[c.tslot] = c.tnext
    if c.tnext != NULL:
        c.tnext.tprev = c.tprev
    c.tprev = NULL
    c.tnext = NULL
    c.tslot = -1


cdef void timer_set(fp_worker* w, fp_conn* c, int64_t due_ms) noexcept nogil:
    """Look at c again at due_ms (rounded up to the next tick not yet run). A due
    time beyond one turn of the wheel comes round early and is simply re-armed."""
    cdef int64_t tick = (due_ms + TICK_MS - 1) // TICK_MS
    cdef int slot
    if tick <= w.wheel_tick:
        tick = w.wheel_tick + 1
    timer_del(w, c)
    slot = <int>(tick % WHEEL_SLOTS)
    c.tslot = slot
    c.tnext = w.wheel[slot]
    if c.tnext != NULL:
        c.tnext.tprev = c
    w.wheel[slot] = c


cdef void conn_rearm(fp_worker* w, fp_conn* c) noexcept nogil:
    """Arm the timer the connection's state needs, or none."""
    cdef int64_t due
    if c.state == ST_CONNECTING or c.state == ST_PREFACE or c.state == ST_HANDSHAKE:
        timer_set(w, c, c.deadline_ms)
    elif c.state == ST_FAILING or c.state == ST_QUEUED:
        timer_set(w, c, w.now_ms + TICK_MS)
    elif c.state == ST_RELAYING:
        due = lifetime_due(c, c.last_active_ms + c.idle_timeout_ms if c.idle_timeout_ms > 0 else -1)
        if due >= 0:
            timer_set(w, c, due)
        else:
            timer_del(w, c)
    else:
        timer_del(w, c)


cdef void timer_fire(fp_worker* w, fp_conn* c) noexcept nogil:
    if c.state == ST_CONNECTING and w.now_ms >= c.deadline_ms:
        c.timed_out = True
        conn_connect_failed(w, c)
    elif c.state == ST_PREFACE and w.now_ms >= c.deadline_ms:
        preface_timeout(w, c)
    elif c.state == ST_HANDSHAKE and w.now_ms >= c.deadline_ms:
        tls_timeout(w, c)
    elif c.state == ST_FAILING:
        conn_fail_flush(w, c)
    elif c.state == ST_QUEUED:
        queue_retry(w, c)
    elif c.state == ST_RELAYING and lifetime_over(w, c):
        pass
    elif c.state == ST_RELAYING and c.idle_timeout_ms > 0:
        if w.now_ms - c.last_active_ms >= c.idle_timeout_ms:
            fp_add_u64(&c.app_st.idle_timeouts, 1)
            c.result = R_IDLE_TIMEOUT
            conn_close_forced(w, c, False)
    if c.tslot < 0:
        conn_rearm(w, c)


cdef void timers_run(fp_worker* w) noexcept nogil:
    """Run every slot whose tick has passed; after a sleep longer than a turn,
    each slot once."""
    cdef int64_t now_tick = w.now_ms // TICK_MS
    cdef int n = 0, slot
    cdef fp_conn* c
    cdef fp_conn* nxt
    while w.wheel_tick < now_tick and n < WHEEL_SLOTS:
        w.wheel_tick += 1
        n += 1
        slot = <int>(w.wheel_tick % WHEEL_SLOTS)
        c = w.wheel[slot]
        w.wheel[slot] = NULL
        while c != NULL:
            nxt = c.tnext
            c.tprev = NULL
            c.tnext = NULL
            c.tslot = -1
            timer_fire(w, c)
            c = nxt
    if w.wheel_tick < now_tick:
        w.wheel_tick = now_tick


cdef int timers_wait_ms(fp_worker* w, int longest) noexcept nogil:
    """How long the loop may sleep: until the tick of the first slot holding a
    timer (timers_run runs it once now_ms reaches that tick), at most `longest`.
    Only the slots within `longest` are looked at: a dozen for a second."""
    cdef int64_t tick = w.wheel_tick + 1
    cdef int64_t last = w.wheel_tick + min(<int64_t>WHEEL_SLOTS, longest // TICK_MS + 1)
    cdef int64_t wait
    while tick <= last:
        if w.wheel[tick % WHEEL_SLOTS] != NULL:
            wait = tick * TICK_MS - monotonic_ms()
            return <int>max(<int64_t>0, min(wait, <int64_t>longest))
        tick += 1
    return longest
