# Kernel and libc interfaces used by the relay, all callable without the GIL.
# Python.h defines _GNU_SOURCE, so splice/pipe2/accept4 are declared by glibc.
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EAGAIN
        EINTR
        EINPROGRESS
        ECONNABORTED
        ECONNRESET
        EPIPE
        EMFILE
        ENFILE
        ENOBUFS
        ENOMEM
        ETIMEDOUT
        EBADF
        EADDRNOTAVAIL
        EPROTO
        EIO


cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    ssize_t read(int fd, void* buf, size_t n)
    ssize_t write(int fd, const void* buf, size_t n)


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64

    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)

    enum:
        EPOLL_CLOEXEC
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLLRDHUP
        EPOLLPRI
        EPOLLET
        EPOLLEXCLUSIVE


cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC


cdef extern from "<fcntl.h>" nogil:
    ssize_t splice(int fd_in, void* off_in, int fd_out, void* off_out,
                   size_t length, unsigned int flags)
    int pipe2(int* fds, int flags)
    int fcntl(int fd, int cmd, ...)
    int open(const char* path, int flags)
    enum:
        O_RDONLY
        O_NONBLOCK
        O_CLOEXEC
        F_SETPIPE_SZ
        F_GETFL
        F_SETFL
        F_GETPIPE_SZ
        SPLICE_F_MOVE
        SPLICE_F_NONBLOCK
        SPLICE_F_MORE


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    cdef struct sockaddr:
        sa_family_t sa_family

    cdef struct sockaddr_storage:
        sa_family_t ss_family

    cdef struct linger:
        int l_onoff
        int l_linger

    cdef struct iovec:
        void* iov_base
        size_t iov_len

    int socket(int domain, int type, int protocol)
    int connect(int fd, const sockaddr* addr, socklen_t addrlen)
    int accept4(int fd, sockaddr* addr, socklen_t* addrlen, int flags)
    int getsockname(int fd, sockaddr* addr, socklen_t* addrlen)
    int getsockopt(int fd, int level, int name, void* value, socklen_t* length)
    int setsockopt(int fd, int level, int name, const void* value, socklen_t length)
    int shutdown(int fd, int how)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t send(int fd, const void* buf, size_t n, int flags)

    enum:
        AF_INET
        AF_INET6
        SOCK_STREAM
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        SOL_SOCKET
        SO_ERROR
        SO_LINGER
        SO_KEEPALIVE
        SO_RCVLOWAT
        SO_COOKIE
        SHUT_WR
        MSG_NOSIGNAL
        MSG_MORE
        MSG_PEEK


cdef extern from "<netinet/in.h>" nogil:
    cdef struct in_addr:
        uint32_t s_addr

    cdef struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr

    cdef struct in6_addr:
        unsigned char s6_addr[16]

    cdef struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id

    uint16_t ntohs(uint16_t v)
    uint16_t htons(uint16_t v)
    enum:
        IPPROTO_TCP
        INET6_ADDRSTRLEN


cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)


cdef extern from "<linux/sockios.h>" nogil:
    enum:
        SIOCOUTQ
        SIOCATMARK
        SIOCINQ


cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY
        TCP_QUICKACK
        TCP_CORK
        TCP_INFO
        TCP_KEEPIDLE
        TCP_KEEPINTVL
        TCP_KEEPCNT
        TCP_USER_TIMEOUT


cdef extern from "<sys/syscall.h>" nogil:
    enum:
        SYS_bpf


cdef extern from "<unistd.h>" nogil:
    long syscall(long number, ...)


cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char* src, void* dst)
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t size)


cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int nanosleep(const timespec* req, timespec* rem)
    enum:
        CLOCK_MONOTONIC
        CLOCK_REALTIME


cdef extern from "<signal.h>" nogil:
    ctypedef struct sigset_t:
        pass
    int sigfillset(sigset_t* s)
    enum:
        SIG_BLOCK
        SIG_SETMASK


cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_create(pthread_t* t, void* attr, void* (*fn)(void*) noexcept nogil, void* arg)
    int pthread_join(pthread_t t, void** ret)
    int pthread_setname_np(pthread_t t, const char* name)
    int pthread_mutex_init(pthread_mutex_t* m, void* attr)
    int pthread_mutex_destroy(pthread_mutex_t* m)
    int pthread_mutex_lock(pthread_mutex_t* m)
    int pthread_mutex_unlock(pthread_mutex_t* m)
    int pthread_sigmask(int how, const sigset_t* s, sigset_t* old)


cdef extern from "<sys/mman.h>" nogil:
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void* addr, size_t length)
    int mprotect(void* addr, size_t length, int prot)
    void* MAP_FAILED
    enum:
        PROT_NONE
        PROT_READ
        PROT_WRITE
        MAP_PRIVATE
        MAP_ANONYMOUS


cdef extern from "<stdlib.h>" nogil:
    void* aligned_alloc(size_t alignment, size_t size)


cdef extern from "<stdio.h>" nogil:
    int snprintf(char* buf, size_t n, const char* fmt, ...)


cdef extern from "includes/atomics.h" nogil:
    void fp_add_u64(uint64_t* p, uint64_t v)
    void fp_add_i64(int64_t* p, int64_t v)
    int64_t fp_fetch_add_i64(int64_t* p, int64_t v)
    uint64_t fp_load_u64(const uint64_t* p)
    int64_t fp_load_i64(const int64_t* p)
    int fp_load_int(const int* p)
    void fp_store_int(int* p, int v)
    int fp_xchg_int(int* p, int v)
    void fp_store_i64(int64_t* p, int64_t v)
    uint32_t fp_next_u32(uint32_t* p)
    uint32_t fp_load_u32(const uint32_t* p)
    bint fp_cas_u32(uint32_t* p, uint32_t* expected, uint32_t v)
    void fp_add_int(int* p, int v)
    int fp_incref(int* p)
    int fp_decref(int* p)
    int fp_add_fetch_int(int* p, int v)
    uint64_t fp_load_acq_u64(const uint64_t* p)
    void fp_store_rel_u64(uint64_t* p, uint64_t v)
    void* fp_load_ptr(void** p)
    void fp_store_ptr(void** p, void* v)
    void fp_fence_seq_cst()
