# Per-app TCP options on the client and target sockets (TcpKeepalive,
# TcpUserTimeout). Without them a peer lost behind a NAT or a dead link holds its
# descriptors until IdleTimeout (an hour by default): keepalive probes, or unacked
# data outliving TcpUserTimeout, make the kernel report ETIMEDOUT on the socket,
# and the relay's usual failure path resets the other side. Nothing is set (no
# syscall) when the app asks for neither.

cdef void tune_socket(fp_route* rt, int fd) noexcept nogil:
    cdef int one = 1
    if rt.ka_idle > 0:
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one))
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &rt.ka_idle, sizeof(int))
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &rt.ka_interval, sizeof(int))
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &rt.ka_count, sizeof(int))
    if rt.user_timeout_ms > 0:
        setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &rt.user_timeout_ms,
                   sizeof(unsigned int))
