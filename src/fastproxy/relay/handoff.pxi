# Spreading clients over the workers. Every worker waits on every listener with
# EPOLLEXCLUSIVE, so the kernel wakes one worker per arrival; but the worker that
# wakes accepts everything queued, and a burst (32 keep-alive clients opened at
# once) all landed on one of two workers while the other idled. Like HAProxy's
# per-thread accept queues, the accepting worker hands a client to the least
# loaded worker when that one has at least two connections fewer than itself.
# The client waits in that worker's inbox, which its eventfd announces.

cdef int worker_load(fp_worker* w) noexcept nogil:
    return fp_load_int(&w.nconns) + fp_load_int(&w.handed)


cdef bint hand_off(fp_worker* w, int fd, int port, sockaddr_storage* peer) noexcept nogil:
    """Give the client to a less loaded worker; False: serve it here."""
    cdef fp_relay* r = w.relay
    cdef fp_worker* best = NULL
    cdef fp_worker* other
    cdef int i, load, best_load = w.nconns - 1
    cdef bint first
    cdef uint64_t one = 1
    if r.nworkers < 2 or not r.handoff:
        return False
    for i in range(r.nworkers):
        other = &r.workers[i]
        if other == w:
            continue
        load = worker_load(other)
        if load < best_load:
            best, best_load = other, load
    if best == NULL:
        return False
    pthread_mutex_lock(&best.inbox_lock)
    if best.handed == HANDOFF_SLOTS or fp_load_int(&best.stop):
        pthread_mutex_unlock(&best.inbox_lock)
        return False
    best.inbox[best.handed].fd = fd
    best.inbox[best.handed].port = port
    memcpy(&best.inbox[best.handed].peer, peer, sizeof(sockaddr_storage))
    first = best.handed == 0
    fp_store_int(&best.handed, best.handed + 1)
    pthread_mutex_unlock(&best.inbox_lock)
    count_held(&w.held_sockets, -1)
    if first:
        write(best.wakefd, &one, sizeof(one))   # later ones find it already announced
    return True


cdef void take_handed(fp_worker* w) noexcept nogil:
    """Serve the clients other workers handed to this one."""
    cdef fp_handoff taken[HANDOFF_SLOTS]
    cdef int i, n
    pthread_mutex_lock(&w.inbox_lock)
    n = w.handed
    memcpy(taken, w.inbox, n * sizeof(fp_handoff))
    fp_store_int(&w.handed, 0)
    pthread_mutex_unlock(&w.inbox_lock)
    for i in range(n):
        count_held(&w.held_sockets, 1)
        take_client(w, taken[i].fd, taken[i].port, &taken[i].peer)


cdef void close_handed(fp_worker* w) noexcept nogil:
    """The workers have stopped: close clients still waiting in the inbox."""
    cdef int i
    pthread_mutex_lock(&w.inbox_lock)
    for i in range(w.handed):
        set_reset_on_close(w.inbox[i].fd)
        close(w.inbox[i].fd)
    fp_store_int(&w.handed, 0)
    pthread_mutex_unlock(&w.inbox_lock)
