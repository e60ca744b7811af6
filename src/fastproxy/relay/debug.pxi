# Debug builds (`FASTPROXY_DEBUG=1 make build`): the relay checks its own
# invariants and counts what each worker holds, so tests can prove that every path
# gives back its connection, sockets and pipes. In release builds FP_DEBUG is 0 and
# all of this compiles to nothing.

cdef extern from "includes/debug.h" nogil:
    enum:
        FP_DEBUG
    void fp_check(bint cond, const char* what)


cdef inline void dbg_count(int* counter, int delta) noexcept nogil:
    if FP_DEBUG:
        fp_store_int(counter, counter[0] + delta)


cdef inline int open_socket(fp_worker* w, int family) noexcept nogil:
    cdef int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd >= 0:
        dbg_count(&w.dbg_sockets, 1)
    return fd


cdef inline void close_socket(fp_worker* w, int fd) noexcept nogil:
    close(fd)
    dbg_count(&w.dbg_sockets, -1)


cdef inline void list_join(fp_conn* c, int which) noexcept nogil:
    fp_check(c.lists == 0, "a connection is on at most one list")
    if FP_DEBUG:
        c.lists |= which


cdef inline void list_leave(fp_conn* c, int which) noexcept nogil:
    if FP_DEBUG:
        c.lists &= ~which
