# Test-only entry points: drive worker 0 of a relay that was never started, one
# event batch at a time, from the calling thread. A test can then deliver the
# events it wants in the order it wants (real ones from the worker's epoll, or
# chosen ones for the connections it sees), which socket-level tests only hit by
# luck. Nothing here is used by the proxy itself.

DEBUG = bool(FP_DEBUG)
STATE_NAMES = {ST_NEW: "new", ST_CONNECTING: "connecting", ST_RETRY: "retry",
               ST_RELAYING: "relaying", ST_CLOSED: "closed", ST_PREFACE: "preface",
               ST_FAILING: "failing", ST_QUEUED: "queued", ST_HANDSHAKE: "handshake"}


cdef fp_worker* _harness_worker(Relay relay) except NULL:
    cdef fp_worker* w = &relay.r.workers[0]
    if relay.running:
        raise RuntimeError("the relay's workers are running: stop it, or never start it")
    if w.wheel_tick == 0:
        w.now_ms = monotonic_ms()
        w.wheel_tick = w.now_ms // TICK_MS
    return w


def harness_step(Relay relay, int timeout_ms=0):
    """Wait up to timeout_ms for worker 0's events and handle them as one batch;
    returns how many there were."""
    cdef fp_worker* w = _harness_worker(relay)
    cdef epoll_event events[MAX_EVENTS]
    cdef int n
    with nogil:
        n = epoll_wait(w.epfd, events, MAX_EVENTS, timeout_ms)
        if n < 0:
            n = 0
        run_batch(w, events, n)
    return n


def harness_inject(Relay relay, list batch):
    """Handle [(connection id, "cli" or "srv", epoll event bits)] as one batch,
    in that order. The ids are those harness_connections() gives."""
    cdef fp_worker* w = _harness_worker(relay)
    cdef epoll_event* events = <epoll_event*>calloc(max(1, len(batch)), sizeof(epoll_event))
    cdef fp_conn* c
    cdef int i, n = len(batch)
    if events == NULL:
        raise MemoryError()
    try:
        live = {conn["id"] for conn in harness_connections(relay)}
        for i, (cid, side, bits) in enumerate(batch):
            if cid not in live:
                raise KeyError(f"no open connection {cid:#x}")
            c = <fp_conn*><size_t>cid
            events[i].events = bits
            events[i].data.ptr = &c.cli if side == "cli" else &c.srv
        with nogil:
            run_batch(w, events, n)
    finally:
        free(events)


def harness_connections(Relay relay):
    """Worker 0's open connections, newest first: id, state, the client's port,
    what each direction holds, and whether the target side is writable."""
    cdef fp_worker* w = _harness_worker(relay)
    cdef fp_conn* c = w.conns
    found = []
    while c != NULL:
        found.append({
            "id": <size_t>c,
            "state": STATE_NAMES[c.state],
            "client_port": ntohs((<sockaddr_in*>&c.peer).sin_port),
            "up": c.up.len,
            "down": c.down.len,
            "up_bulk": bool(c.up.bulk),       # splice-auto: the direction carries bulk
            "up_piped": bool(c.up.piped),     # and its bytes go through a pipe
            "srv_writable": bool(c.srv.writable),
        })
        c = c.next
    return found


def harness_inbox(Relay relay):
    """How many handed clients wait in each worker's inbox (handoff.pxi)."""
    cdef int i
    return [fp_load_int(&relay.r.workers[i].handed) for i in range(relay.r.nworkers)]


def harness_held(Relay relay):
    """What the workers hold: connections open, connections allocated and not yet
    freed, sockets, and pipes and buffers held by channels, in all workers (counted
    in every build, debug.pxi)."""
    cdef int i
    cdef fp_worker* w
    conns = allocated = sockets = pipes = bufs = 0
    for i in range(relay.r.nworkers):
        w = &relay.r.workers[i]
        conns += fp_load_int(&w.nconns)
        allocated += fp_load_int(&w.held_conns)
        sockets += fp_load_int(&w.held_sockets)
        pipes += fp_load_int(&w.held_pipes)
        bufs += fp_load_int(&w.held_bufs)
    return {"connections": conns, "allocated": allocated, "sockets": sockets, "pipes": pipes,
            "buffers": bufs}
