# Connections the proxy ends on its own initiative, from the worker's timer wheel
# (timers.pxi asks lifetime_due when it arms a relaying connection's timer, and
# lifetime_over when the timer fires):
#   MaxConnectionDuration: a connection older than it, plus up to 10 % jitter drawn
#     once per connection, is closed, so long-lived clients spread over new targets
#     after a scale-up (and never all reconnect in the same tick);
#   OnTargetDown close: the orchestrator publishes, in the target's counter slot,
#     when the target was taken down (closed_since_ms). Each connection looks at
#     its target's value every down_check_ms and closes itself if it was accepted
#     before then. Each worker closes only its own connections, a few per tick:
#     nothing walks every connection, and no lock is taken.

cdef void lifetime_begin(fp_worker* w, fp_conn* c, fp_route* rt) noexcept nogil:
    """At the connect: the route's limits, copied (the route is let go of once a
    byte has gone)."""
    cdef int64_t d = rt.max_duration_ms
    if d > 0:
        c.end_ms = c.start_ms + d + <int64_t>(next_random(w) % <uint64_t>(d // 10 + 1))
    c.check_every_ms = rt.down_check_ms
    if c.check_every_ms > 0:
        c.next_check_ms = w.now_ms + c.check_every_ms


cdef inline int64_t lifetime_due(fp_conn* c, int64_t due) noexcept nogil:
    """The earlier of due (-1: none) and the next moment this file needs a look."""
    if c.end_ms > 0 and (due < 0 or c.end_ms < due):
        due = c.end_ms
    if c.check_every_ms > 0 and (due < 0 or c.next_check_ms < due):
        due = c.next_check_ms
    return due


cdef bint lifetime_over(fp_worker* w, fp_conn* c) noexcept nogil:
    """Close the connection if its target was taken down since it was accepted, or
    its time is up. True when it was closed."""
    if c.check_every_ms > 0 and w.now_ms >= c.next_check_ms:
        c.next_check_ms = w.now_ms + c.check_every_ms
        outlier_look(w, c, False)
        if c.tgt_st != NULL and c.start_ms <= fp_load_i64(&c.tgt_st.closed_since_ms):
            fp_add_u64(&c.app_st.closed_target_down, 1)
            c.result = R_TARGET_DOWN
            conn_close_forced(w, c, True)   # cut: the client must not take it for an end
            return True
    if c.end_ms > 0 and w.now_ms >= c.end_ms:
        fp_add_u64(&c.app_st.closed_max_duration, 1)
        c.result = R_MAX_DURATION
        conn_close_forced(w, c, False)      # FINs unless bytes are in flight
        return True
    return False
