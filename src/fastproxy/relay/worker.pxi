# A worker thread: one epoll loop, run without the GIL. Listening sockets are
# registered in every worker with EPOLLEXCLUSIVE, so the kernel wakes one worker
# per incoming connection; that worker, or the one it hands the client to
# (handoff.pxi), owns the connection to the end.

cdef void process_retries(fp_worker* w) noexcept nogil:
    cdef fp_conn* c = w.retry
    cdef fp_conn* nxt
    w.retry = NULL
    while c != NULL:
        nxt = c.retry_next
        c.retry_next = NULL
        list_leave(c, LIST_RETRY)
        if c.state == ST_RETRY:
            # Off the list now: if no target is left, conn_close must bury it itself.
            c.state = ST_NEW
            conn_connect_next(w, c)
        else:
            fp_check(c.state == ST_CLOSED, "a queued connection is retried or closed")
            bury(w, c)          # its client left while it waited
        c = nxt


cdef void process_ready(fp_worker* w) noexcept nogil:
    """Pump again the connections that stopped at their byte budget."""
    cdef fp_conn* c = w.ready
    cdef fp_conn* nxt
    w.ready = NULL
    while c != NULL:
        nxt = c.ready_next
        c.ready_next = NULL
        c.ready = False
        if c.state == ST_RELAYING:
            conn_pump(w, c)
        elif c.state == ST_FAILING:
            conn_fail_flush(w, c)
        c = nxt


cdef void free_graveyard(fp_worker* w) noexcept nogil:
    """Free the connections closed in this batch; one still on the ready list waits
    for the next batch, when process_ready has let go of it."""
    cdef fp_conn* c = w.graveyard
    cdef fp_conn* nxt
    w.graveyard = NULL
    while c != NULL:
        nxt = c.grave_next
        if c.ready:
            c.grave_next = w.graveyard
            w.graveyard = c
        else:
            free(c)
            count_held(&w.held_conns, -1)
        c = nxt


cdef void conn_close_forced(fp_worker* w, fp_conn* c, bint abort_open) noexcept nogil:
    """Closing on our own initiative. When bytes were still in flight (or, with
    abort_open, a direction still open: the proxy stopping), a FIN would pass
    truncation off as a clean end of stream, so both sides get a reset instead.
    An idle connection with nothing in flight is closed with FINs."""
    if c.up.len or c.down.len or (abort_open and not (chan_finished(&c.up) and chan_finished(&c.down))):
        if c.cli.fd >= 0:
            set_reset_on_close(c.cli.fd)
        if c.srv.fd >= 0:
            set_reset_on_close(c.srv.fd)
    conn_close(w, c)


cdef void drain_wakefd(fp_worker* w) noexcept nogil:
    cdef uint64_t value
    read(w.wakefd, &value, sizeof(value))


cdef void run_batch(fp_worker* w, epoll_event* events, int n) noexcept nogil:
    """Handle one batch of events, then what waits for the batch to end: retries,
    timers due, connections that used up their byte budget, and freeing the
    connections it closed."""
    cdef int i, kind
    w.now_ms = monotonic_ms()
    for i in range(n):
        kind = (<int*>events[i].data.ptr)[0]
        if kind == KIND_SIDE:
            side_event(w, <fp_side*>events[i].data.ptr, events[i].events)
        elif kind == KIND_LISTENER:
            accept_clients(w, <fp_listener*>events[i].data.ptr)
        else:
            drain_wakefd(w)
            take_handed(w)
    process_retries(w)
    timers_run(w)
    process_retries(w)
    process_ready(w)
    free_graveyard(w)
    fp_store_int(&w.epoch, w.epoch + 1)
    # Store-buffer pattern with Relay._epochs / quiesce: we store the epoch, then
    # (next batch) load apps[], port_app[] and port_sni[]; Python stores those, then
    # loads the epochs. Release/acquire lets each side's load pass its own store
    # (x86 does, from its store buffer): Python could see the old epoch while we
    # still read the old table, and free it under us. A full fence on each side
    # forbids that. (It held before only because epoll_wait and Python's mutex
    # unlock happen to fence.)
    fp_fence_seq_cst()


cdef void* worker_main(void* arg) noexcept nogil:
    cdef fp_worker* w = <fp_worker*>arg
    cdef epoll_event events[MAX_EVENTS]
    cdef int n, timeout
    # Signals stay blocked (Relay.start creates us with all of them blocked): they
    # belong to the Python main thread.
    w.now_ms = monotonic_ms()
    w.wheel_tick = w.now_ms // TICK_MS
    while not fp_load_int(&w.stop):
        if w.ready != NULL:
            timeout = 0         # collect other events, then resume the ready ones
        else:
            # Connect, preface, idle and failing timers are all on the wheel: sleep
            # until the first is due, not a fixed tick or second past it.
            timeout = timers_wait_ms(w, IDLE_WAIT_MS)
        n = epoll_wait(w.epfd, events, MAX_EVENTS, timeout)
        run_batch(w, events, n)
    # Stopped: whatever is still open is closed (the orchestrator drains first).
    while w.conns != NULL:
        w.conns.result = R_SHUTDOWN
        conn_close_forced(w, w.conns, True)
    process_ready(w)            # every connection is closed: this only lets go of them
    free_graveyard(w)
    pool_drain(w)
    fp_store_int(&w.exited, 1)
    return NULL
