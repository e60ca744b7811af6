# Per-worker pools of pipes (splice mode) and buffers (copy mode). A channel holds
# one only while bytes are in flight, so an idle connection costs no pipe: this is
# what keeps memory per idle connection small.

cdef inline size_t buf_cap(fp_relay* r) noexcept nogil:
    """The mode's buffer: small messages in splice mode, everything in copy mode."""
    return SMALL_BUF if r.use_splice else r.chan_cap


cdef inline size_t chan_buf_cap(fp_relay* r, fp_chan* c) noexcept nogil:
    """The size of the channel's buffer: the one it holds, or the one it would get. A
    direction that must copy (TLS without kTLS) never moves to a pipe: in splice mode it
    gets chan_cap when that is larger, as in copy mode. 16 KiB at a time cost terminated
    bulk ~20 % more proxy CPU per GB than copy mode (profiles/tls_splice_buffers.md)."""
    if c.buf != NULL:
        return c.buf_size
    if c.copy_only and r.use_splice and r.chan_cap > SMALL_BUF:
        return r.chan_cap
    return buf_cap(r)


cdef int chan_acquire(fp_worker* w, fp_chan* c, bint pipe) noexcept nogil:
    """Give the channel a pipe or buffer. Returns 0 or -errno."""
    cdef int fds[2]
    if pipe:
        if c.pipe_r >= 0:
            return 0
        count_held(&w.held_pipes, 1)
        if w.npipes > 0:
            w.npipes -= 1
            c.pipe_r = w.pipes[2 * w.npipes]
            c.pipe_w = w.pipes[2 * w.npipes + 1]
            return 0
        if pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0:
            count_held(&w.held_pipes, -1)
            return -errno
        if w.relay.pipe_size > 0:
            # Best effort: a smaller pipe only means more syscalls per byte.
            fcntl(fds[1], F_SETPIPE_SZ, w.relay.pipe_size)
        c.pipe_r = fds[0]
        c.pipe_w = fds[1]
        return 0
    if c.buf != NULL:
        return 0
    cdef size_t size = chan_buf_cap(w.relay, c)
    if size == buf_cap(w.relay) and w.nbufs > 0:
        w.nbufs -= 1
        c.buf = w.bufs[w.nbufs]
    elif size != buf_cap(w.relay) and w.nbig_bufs > 0:
        w.nbig_bufs -= 1
        c.buf = w.big_bufs[w.nbig_bufs]
    else:
        c.buf = <char*>malloc(size)
        if c.buf == NULL:
            return -ENOMEM
    c.buf_size = size
    count_held(&w.held_bufs, 1)
    c.off = 0
    return 0


cdef void chan_release(fp_worker* w, fp_chan* c) noexcept nogil:
    """Return the pipe or buffer to the pool. A pipe still holding bytes (an aborted
    connection) is closed instead: its contents must not leak into the next one."""
    if c.pipe_r >= 0:
        count_held(&w.held_pipes, -1)
        if c.len == 0 and w.npipes < POOL_MAX:
            w.pipes[2 * w.npipes] = c.pipe_r
            w.pipes[2 * w.npipes + 1] = c.pipe_w
            w.npipes += 1
        else:
            close(c.pipe_r)
            close(c.pipe_w)
        c.pipe_r = -1
        c.pipe_w = -1
    if c.buf != NULL:
        count_held(&w.held_bufs, -1)
        if c.buf_size == buf_cap(w.relay) and w.nbufs < POOL_MAX:
            w.bufs[w.nbufs] = c.buf
            w.nbufs += 1
        elif c.buf_size != buf_cap(w.relay) and w.nbig_bufs < POOL_MAX:
            w.big_bufs[w.nbig_bufs] = c.buf
            w.nbig_bufs += 1
        else:
            free(c.buf)
        c.buf = NULL
        c.buf_size = 0
    c.len = 0
    c.off = 0
    c.piped = False


cdef int open_devnull() noexcept nogil:
    return open(b"/dev/null", O_RDONLY | O_CLOEXEC)


cdef void pool_drain(fp_worker* w) noexcept nogil:
    cdef int i
    for i in range(2 * w.npipes):
        close(w.pipes[i])
    w.npipes = 0
    for i in range(w.nbufs):
        free(w.bufs[i])
    w.nbufs = 0
    for i in range(w.nbig_bufs):
        free(w.big_bufs[i])
    w.nbig_bufs = 0
