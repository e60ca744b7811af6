# Outlier detection, counted where the failures happen: a connect that fails
# (refused, unreachable, timed out, or reset before a byte went either way) and a
# target that resets a connection before its first byte each add one to the
# target's consecutive failures; a connection that received a byte from its target
# sets them back to 0 (seen at its next timer look, lifetime.pxi, or its close).
# The worker that takes a target over its app's ConsecutiveFailures raises
# eject_pending and wakes the orchestrator through outlier_fd at that moment (one
# write per crossing); the orchestrator (outlier.py) decides the ejection, which
# needs the whole app: MaxEjectedPercent, growing ejection times.

cdef void outlier_failure(fp_worker* w, fp_stats* st) noexcept nogil:
    cdef uint64_t one = 1
    cdef int threshold = st.outlier_threshold
    fp_add_u64(&st.outlier_failures, 1)
    if threshold <= 0:
        return
    if fp_fetch_add_i64(&st.consecutive, 1) + 1 >= threshold:
        if fp_xchg_int(&st.eject_pending, 1) == 0 and w.relay.outlier_fd >= 0:
            write(w.relay.outlier_fd, &one, sizeof(one))


cdef inline void count_connect_failure(fp_worker* w, fp_stats* st) noexcept nogil:
    fp_add_u64(&st.connect_failures, 1)
    outlier_failure(w, st)


cdef void outlier_look(fp_worker* w, fp_conn* c, bint closing) noexcept nogil:
    """A connected connection's verdict on its target, counted once: a byte came
    from it (success), or, at the close, it reset before its first byte."""
    if c.outlier_seen or c.tgt_st == NULL:
        return
    if c.bytes_out > 0:
        c.outlier_seen = True
        if fp_load_i64(&c.tgt_st.consecutive) != 0:
            fp_store_i64(&c.tgt_st.consecutive, 0)
    elif closing:
        c.outlier_seen = True
        if c.state == ST_FAILING and c.failed == &c.srv:
            outlier_failure(w, c.tgt_st)
