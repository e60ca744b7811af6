# Every build counts what each worker holds (connections allocated, sockets, pipes
# and buffers held by channels), so a test can prove, in the release build CI runs,
# that every path gives them back: plain per-worker integers, one writer each.
# Debug builds (`make build-debug`) also check the relay's invariants; in release
# builds FP_DEBUG is 0 and the checks compile to nothing.

cdef extern from "includes/debug.h" nogil:
    enum:
        FP_DEBUG
    void fp_check(bint cond, const char* what)


cdef inline void count_held(int* counter, int delta) noexcept nogil:
    # Only its worker writes it: a store, not an atomic add (harness_held reads it).
    fp_store_int(counter, counter[0] + delta)


cdef inline int open_socket(fp_worker* w, int family) noexcept nogil:
    cdef int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd >= 0:
        count_held(&w.held_sockets, 1)
    return fd


cdef inline void close_socket(fp_worker* w, int fd) noexcept nogil:
    close(fd)
    count_held(&w.held_sockets, -1)


cdef inline void list_join(fp_conn* c, int which) noexcept nogil:
    fp_check(c.lists == 0, "a connection is on at most one list")
    if FP_DEBUG:
        c.lists |= which


cdef inline void list_leave(fp_conn* c, int which) noexcept nogil:
    if FP_DEBUG:
        c.lists &= ~which
