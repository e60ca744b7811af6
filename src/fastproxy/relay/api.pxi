# The Python face of the relay. Everything here runs with the GIL, in the
# orchestrator's thread; the workers never call back into Python.

import ipaddress
import os
import time

TARGET_UP = T_UP
TARGET_DOWN = T_DOWN
TARGET_DRAINING = T_DRAINING
TARGET_DISABLED = T_DISABLED
BALANCE = {
    "round-robin": BAL_ROUND_ROBIN,
    "least-conn": BAL_LEAST_CONN,
    "random": BAL_RANDOM,
    "source-hash": BAL_SOURCE_HASH,
    "maglev": BAL_MAGLEV,
}
MAX_SLOTS = STATS_CHUNK * STATS_CHUNKS
# Bounds of the connect-time buckets in seconds (the 16th bucket is above them all).
CONNECT_BUCKETS = tuple(CONNECT_BUCKETS_US[i] / 1e6 for i in range(15))
STATS_FIELDS = (
    "connections", "active", "bytes_in", "bytes_out", "connect_failures",
    "no_target", "rejected", "panic", "idle_timeouts", "local_errors",
    "proxy_errors", "rejected_per_source", "sni_unmatched", "sni_errors",
    "rejected_deny", "rejected_untrusted", "rejected_rate", "rejected_source_rate",
    "rejected_preface", "closed_max_duration", "closed_target_down",
    "saturated_hard", "saturated_soft", "queued", "rejected_saturated",
    "consecutive_failures", "outlier_failures",
    "tls_handshakes", "tls_resumed", "tls_timeouts", "tls_errors",
    "tls_closed", "tls_target_errors", "tls_ktls",
)
# Access log results, indexed by AccessResult.
ACCESS_RESULTS = (
    "ok", "reset", "no-target", "connect-timeout", "rejected", "idle-timeout",
    "proxy-protocol-error", "sni-unmatched", "sni-error", "local-error", "shutdown",
    "max-duration", "target-down",
    "tls-timeout", "tls-error", "tls-closed", "tls-target-error",
)
NO_SLOT_ID = NO_SLOT
# Counter slots sit side by side, each on its own cache lines (structs.pxi).
assert sizeof(fp_stats) % 64 == 0, sizeof(fp_stats)


def _seed_source_key():
    """The per-source hash key (persource.pxi): random per process."""
    global SOURCE_KEY0, SOURCE_KEY1
    key = os.urandom(16)
    SOURCE_KEY0 = int.from_bytes(key[:8], "little")
    SOURCE_KEY1 = int.from_bytes(key[8:], "little")


_seed_source_key()


def cidr_keys(cidrs):
    """CIDR strings as the relay's lists hold them: (prefix length, hi, lo) of the
    128-bit form, IPv4 as ::ffff:a.b.c.d/96+len."""
    keys = []
    for text in cidrs:
        net = ipaddress.ip_network(text, strict=False)
        plen = net.prefixlen
        if net.version == 4:
            value = (0xFFFF << 32) | int(net.network_address)
            plen += 96
        else:
            value = int(net.network_address)
        keys.append((plen, value >> 64, value & 0xFFFFFFFFFFFFFFFF))
    return keys


cdef int fill_sockaddr(sockaddr_storage* ss, socklen_t* length, int family,
                       bytes host, int port) except -1:
    cdef sockaddr_in* a4 = <sockaddr_in*>ss
    cdef sockaddr_in6* a6 = <sockaddr_in6*>ss
    memset(ss, 0, sizeof(sockaddr_storage))
    if family == AF_INET:
        a4.sin_family = AF_INET
        a4.sin_port = htons(port)
        if inet_pton(AF_INET, host, &a4.sin_addr) != 1:
            raise ValueError(f"not an IPv4 address: {host!r}")
        length[0] = sizeof(sockaddr_in)
    elif family == AF_INET6:
        a6.sin6_family = AF_INET6
        a6.sin6_port = htons(port)
        if inet_pton(AF_INET6, host, &a6.sin6_addr) != 1:
            raise ValueError(f"not an IPv6 address: {host!r}")
        length[0] = sizeof(sockaddr_in6)
    else:
        raise ValueError(f"unsupported address family {family}")
    return 0


cdef uint32_t gcd(uint32_t a, uint32_t b) noexcept nogil:
    while b:
        a, b = b, a % b
    return a


cdef int build_wrr(fp_route* rt) noexcept nogil:
    """One cycle of smooth weighted round robin (nginx): every turn each target
    gains its weight, the richest is picked and pays the total. Weights 3:1 give
    a a b a, never a a a b. Dividing by the common divisor first keeps the cycle
    (and the table) as short as the same sequence allows."""
    cdef int n = rt.ntargets, i, best
    cdef uint32_t g = 0, k
    cdef int64_t total = 0
    cdef int64_t* current
    for i in range(n):
        g = gcd(rt.targets[i].weight, g)
    for i in range(n):
        total += rt.targets[i].weight // g
    current = <int64_t*>calloc(n, sizeof(int64_t))
    rt.wrr = <uint32_t*>malloc(total * sizeof(uint32_t))
    if current == NULL or rt.wrr == NULL:
        free(current)
        return -1
    for k in range(<uint32_t>total):
        best = 0
        for i in range(n):
            current[i] += rt.targets[i].weight // g
            if current[i] > current[best]:
                best = i
        current[best] -= total
        rt.wrr[k] = best
    rt.nwrr = <uint32_t>total
    free(current)
    return 0


cdef class Relay:
    """Worker threads moving bytes between clients and targets.

    The orchestrator tells it which port belongs to which app (set_port), each
    app's targets and policy (set_app), and which listening sockets to accept on
    (add_listener); counters are read back with stats(slot)."""

    cdef fp_relay* r
    cdef bint running
    cdef object _listeners     # fd -> address of its fp_listener, for removal
    cdef list _retired          # (address, is_sni, workers' epochs) of replaced tables

    def __cinit__(self, *, int workers=1, bint splice=True, int pipe_size=0,
                  int buffer_size=65536, bint handoff=True):
        cdef int i
        cdef int fds[2]
        cdef fp_worker* w
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self._listeners = {}
        self._retired = []
        self.r = <fp_relay*>calloc(1, sizeof(fp_relay))
        if self.r == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.r.lock, NULL)
        self.r.use_splice = splice
        self.r.handoff = handoff
        self.r.pipe_size = pipe_size
        self.r.apps = <fp_route**>calloc(MAX_APPS, sizeof(fp_route*))
        self.r.port_app = <int*>malloc(65536 * sizeof(int))
        self.r.port_sni = <fp_sni**>calloc(65536, sizeof(fp_sni*))
        self.r.chunks = <fp_stats**>calloc(STATS_CHUNKS, sizeof(fp_stats*))
        self.r.workers = <fp_worker*>calloc(workers, sizeof(fp_worker))
        if not (self.r.apps and self.r.port_app and self.r.port_sni and self.r.chunks
                and self.r.workers):
            raise MemoryError()
        for i in range(65536):
            self.r.port_app[i] = -1
        self.r.outlier_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.r.outlier_fd < 0:
            raise OSError(errno, "cannot make the outlier eventfd")
        if splice:
            # A channel may hold what one pipe holds; measure it rather than trust
            # the request (the kernel rounds, and caps unprivileged users).
            if pipe2(fds, O_CLOEXEC) < 0:
                raise OSError(errno, "pipe2 failed")
            if pipe_size > 0 and fcntl(fds[1], F_SETPIPE_SZ, pipe_size) < 0:
                close(fds[0])
                close(fds[1])
                raise OSError(errno, f"cannot set the pipe size to {pipe_size}")
            self.r.chan_cap = fcntl(fds[1], F_GETPIPE_SZ)
            close(fds[0])
            close(fds[1])
        else:
            self.r.chan_cap = buffer_size
        for i in range(workers):
            w = &self.r.workers[i]
            w.kind = KIND_WAKE
            w.index = i
            w.relay = self.r
            w.rng = <uint64_t>(i + 1) * 0x2545f4914f6cdd1dULL ^ <uint64_t>monotonic_ms()
            w.pipes = <int*>malloc(2 * POOL_MAX * sizeof(int))
            w.bufs = <char**>malloc(POOL_MAX * sizeof(char*))
            w.big_bufs = <char**>malloc(POOL_MAX * sizeof(char*))
            w.bounce = <char*>malloc(BOUNCE_SIZE)
            w.hello = <uint8_t*>malloc(SNI_MAX)
            w.epfd = epoll_create1(EPOLL_CLOEXEC)
            w.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
            w.reserve_fd = open_devnull()
            w.inbox = <fp_handoff*>malloc(HANDOFF_SLOTS * sizeof(fp_handoff))
            pthread_mutex_init(&w.inbox_lock, NULL)
            self.r.nworkers += 1
            if w.pipes == NULL or w.bufs == NULL or w.big_bufs == NULL or w.bounce == NULL \
                    or w.hello == NULL or w.inbox == NULL or w.epfd < 0 \
                    or w.wakefd < 0 or w.reserve_fd < 0:
                raise OSError(errno, "cannot set up a relay worker")
            self._epoll_add(w, w.wakefd, EPOLLIN, w)

    def __dealloc__(self):
        cdef int i
        cdef fp_listener* l
        cdef fp_listener* nxt
        if self.r == NULL:
            return
        self.stop()
        if self._retired is not None:
            self._retire(0, False)      # workers stopped: every one has moved on
        for i in range(self.r.nworkers):
            if self.r.workers[i].epfd >= 0:
                close(self.r.workers[i].epfd)
            if self.r.workers[i].wakefd >= 0:
                close(self.r.workers[i].wakefd)
            if self.r.workers[i].reserve_fd >= 0:
                close(self.r.workers[i].reserve_fd)
            free(self.r.workers[i].pipes)
            free(self.r.workers[i].bufs)
            free(self.r.workers[i].big_bufs)
            free(self.r.workers[i].bounce)
            free(self.r.workers[i].hello)
            free(self.r.workers[i].alog)
            if self.r.workers[i].inbox != NULL:
                free(self.r.workers[i].inbox)
                pthread_mutex_destroy(&self.r.workers[i].inbox_lock)
        l = self.r.listeners
        while l != NULL:
            nxt = <fp_listener*>l.next
            free(l)
            l = nxt
        if self.r.apps != NULL:
            for i in range(MAX_APPS):
                if self.r.apps[i] != NULL:
                    route_decref(self.r.apps[i])
        if self.r.chunks != NULL:
            for i in range(STATS_CHUNKS):
                free(self.r.chunks[i])
        if self.r.port_sni != NULL:
            for i in range(65536):
                if self.r.port_sni[i] != NULL:
                    sni_decref(self.r.port_sni[i])
        if self.r.outlier_fd >= 0:
            close(self.r.outlier_fd)
        free(self.r.apps)
        free(self.r.port_app)
        free(self.r.port_sni)
        free(self.r.chunks)
        free(self.r.workers)
        pthread_mutex_destroy(&self.r.lock)
        free(self.r)
        self.r = NULL

    cdef int _epoll_add(self, fp_worker* w, int fd, uint32_t events, void* ptr) except -1:
        cdef epoll_event ev
        ev.events = events
        ev.data.ptr = ptr
        if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            raise OSError(errno, f"epoll_ctl(ADD, {fd}) failed")
        return 0

    # -- life cycle -----------------------------------------------------------

    @property
    def workers(self):
        return self.r.nworkers

    @property
    def splice(self):
        return bool(self.r.use_splice)

    @property
    def channel_capacity(self):
        """Bytes one direction of a connection may hold (the pipe or buffer size)."""
        return self.r.chan_cap

    def start(self):
        cdef int i, rc = 0
        cdef sigset_t all_signals, previous
        if self.running:
            return
        # Threads inherit the creator's signal mask: create them with every signal
        # blocked, so none is ever delivered to a worker, not even at its start.
        sigfillset(&all_signals)
        pthread_sigmask(SIG_BLOCK, &all_signals, &previous)
        try:
            for i in range(self.r.nworkers):
                self.r.workers[i].stop = 0
                self.r.workers[i].exited = 0
                rc = pthread_create(&self.r.workers[i].thread, NULL, worker_main,
                                    &self.r.workers[i])
                if rc != 0:
                    break
                self.r.workers[i].started = True
                # `top -H`, perf and the benchmarks tell the workers apart by name.
                pthread_setname_np(self.r.workers[i].thread, f"fp-worker-{i}".encode())
        finally:
            pthread_sigmask(SIG_SETMASK, &previous, NULL)
        if rc != 0:
            self.stop()
            raise OSError(rc, "cannot start a relay worker thread")
        self.running = True

    def stop(self):
        """Stop the workers; connections still open are closed."""
        cdef int i
        cdef uint64_t one = 1
        if self.r == NULL:
            return
        for i in range(self.r.nworkers):
            fp_store_int(&self.r.workers[i].stop, 1)
            write(self.r.workers[i].wakefd, &one, sizeof(one))
        with nogil:
            for i in range(self.r.nworkers):
                if self.r.workers[i].started:
                    pthread_join(self.r.workers[i].thread, NULL)
                    self.r.workers[i].started = False
            for i in range(self.r.nworkers):
                close_handed(&self.r.workers[i])
        self.running = False

    cdef list _epochs(self):
        cdef int i
        # The tables published before must be visible before the epochs are read:
        # the other half of the fence in run_batch (worker.pxi).
        fp_fence_seq_cst()
        return [fp_load_int(&self.r.workers[i].epoch) for i in range(self.r.nworkers)]

    cdef bint _moved_on(self, list seen):
        """Has every worker finished the event batch it was in when seen was taken?"""
        cdef int i
        for i in range(self.r.nworkers):
            if (self.r.workers[i].started and not fp_load_int(&self.r.workers[i].exited)
                    and fp_load_int(&self.r.workers[i].epoch) == seen[i]):
                return False
        return True

    def _retire(self, size_t old, bint sni):
        """Drop the table's reference to a replaced route or server name table once
        no worker can still be about to take one (they read it without a lock);
        checked on every later publish, and at the end."""
        if old:
            self._retired.append((old, sni, self._epochs()))
        keep = []
        for entry in self._retired:
            if self._moved_on(entry[2]):
                if entry[1]:
                    sni_decref(<fp_sni*><size_t>entry[0])
                else:
                    route_decref(<fp_route*><size_t>entry[0])
            else:
                keep.append(entry)
        self._retired = keep

    def quiesce(self):
        """Return once every running worker has finished the event batch it was in:
        after this, no worker holds a pointer it read before the call."""
        cdef int i
        cdef uint64_t one = 1
        cdef int* seen = <int*>malloc(self.r.nworkers * sizeof(int))
        cdef timespec pause
        pause.tv_sec = 0
        pause.tv_nsec = 200000
        if seen == NULL:
            raise MemoryError()
        try:
            fp_fence_seq_cst()          # as in _epochs: tables stored, then epochs read
            for i in range(self.r.nworkers):
                seen[i] = fp_load_int(&self.r.workers[i].epoch)
                write(self.r.workers[i].wakefd, &one, sizeof(one))
            with nogil:
                for i in range(self.r.nworkers):
                    # A stopping worker still finishes its batch: wait for that too.
                    while (self.r.workers[i].started
                           and not fp_load_int(&self.r.workers[i].exited)
                           and fp_load_int(&self.r.workers[i].epoch) == seen[i]):
                        nanosleep(&pause, NULL)
        finally:
            free(seen)
        self._retire(0, False)          # every table replaced before the call can go

    # -- listeners ------------------------------------------------------------

    def add_listener(self, int fd, int port=0, int worker=-1):
        """Accept on a listening socket. port: the port it is bound to (ports
        steering); 0 when connections are steered to it, so the app is found from
        each connection's local port. worker: -1, every worker waits on it (one woken
        per arrival); else only that one (a socket of a SO_REUSEPORT group per
        worker, as benchmarks/spread.py compares). The caller keeps owning the fd."""
        cdef fp_listener* l
        cdef int i, flags
        if fd in self._listeners:
            raise ValueError(f"fd {fd} is already a listener")
        if not -1 <= worker < self.r.nworkers:
            raise ValueError(f"no worker {worker}")
        # Several workers race for each connection: the loser must get EAGAIN.
        flags = fcntl(fd, F_GETFL)
        if flags < 0 or fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0:
            raise OSError(errno, f"fd {fd} is not usable as a listener")
        l = <fp_listener*>calloc(1, sizeof(fp_listener))
        if l == NULL:
            raise MemoryError()
        l.kind = KIND_LISTENER
        l.fd = fd
        l.port = port
        for i in range(self.r.nworkers):
            if worker >= 0 and i != worker:
                continue
            try:
                self._epoll_add(&self.r.workers[i], fd, EPOLLIN | EPOLLEXCLUSIVE, l)
            except OSError:
                for i in range(i):
                    epoll_ctl(self.r.workers[i].epfd, EPOLL_CTL_DEL, fd, NULL)
                free(l)
                raise
        pthread_mutex_lock(&self.r.lock)
        l.next = self.r.listeners
        self.r.listeners = l
        pthread_mutex_unlock(&self.r.lock)
        self._listeners[fd] = <size_t>l

    def remove_listener(self, int fd):
        """Stop accepting on fd. When this returns no worker touches it any more,
        so the caller may close it (or hand it to another process)."""
        cdef fp_listener* l
        cdef fp_listener** link
        cdef int i
        addr = self._listeners.pop(fd, None)
        if addr is None:
            raise KeyError(fd)
        l = <fp_listener*><size_t>addr
        for i in range(self.r.nworkers):
            epoll_ctl(self.r.workers[i].epfd, EPOLL_CTL_DEL, fd, NULL)
        self.quiesce()
        pthread_mutex_lock(&self.r.lock)
        link = &self.r.listeners
        while link[0] != NULL and link[0] != l:
            link = <fp_listener**>&link[0].next
        if link[0] == l:
            link[0] = <fp_listener*>l.next
        pthread_mutex_unlock(&self.r.lock)
        free(l)

    @property
    def listener_fds(self):
        return sorted(self._listeners)

    # -- routing --------------------------------------------------------------

    def set_port(self, int port, int app_id):
        """Route connections arriving on port to app_id (-1: no app, close them)."""
        if not 0 < port < 65536:
            raise ValueError(f"port out of range: {port}")
        if not -1 <= app_id < MAX_APPS:
            raise ValueError(f"app id out of range: {app_id}")
        fp_store_int(&self.r.port_app[port], app_id)
        self._retire(<size_t>sni_publish(self.r, port, NULL), True)

    def set_port_sni(self, int port, list names, *, int default_app=-1,
                     bint accept_proxy=False, bint need_local=False, int count_slot,
                     int count_app=-1):
        """Route the port by TLS server name. names: [(name, app_id)], exact
        names or "*.suffix" wildcards (matching one label or more before .suffix);
        default_app takes other names and hellos without one (-1: closed).
        count_slot: the app slot counting clients before their app is known, and
        count_app its app, whose trusted PROXY senders are checked at accept."""
        cdef fp_sni* t
        cdef fp_sni_name* e
        cdef size_t size = 0, off = 0
        cdef int i
        if not 0 < port < 65536:
            raise ValueError(f"port out of range: {port}")
        entries = []
        for name, app in names:
            raw = name.lower().encode("ascii")
            wildcard = raw.startswith(b"*.")
            entries.append((wildcard, -len(raw), raw[1:] if wildcard else raw, app))
        entries.sort()      # exact names first, then wildcards, longest suffix first
        self.ensure_slot(count_slot)
        t = <fp_sni*>calloc(1, sizeof(fp_sni))
        if t == NULL:
            raise MemoryError()
        t.refcnt = 1
        t.names = <fp_sni_name*>calloc(max(1, len(entries)), sizeof(fp_sni_name))
        t.blob = <char*>malloc(max(1, sum(len(e[2]) for e in entries)))
        if t.names == NULL or t.blob == NULL:
            sni_free(t)
            raise MemoryError()
        for i, (wildcard, _, raw, app) in enumerate(entries):
            e = &t.names[i]
            memcpy(t.blob + off, <const char*>raw, len(raw))
            e.name = t.blob + off
            e.len = len(raw)
            e.wildcard = wildcard
            e.app = app
            off += len(raw)
        t.nnames = len(entries)
        t.default_app = default_app
        t.accept_proxy = accept_proxy
        t.need_local = need_local
        t.count_slot = count_slot
        t.count_app = count_app
        self._retire(<size_t>sni_publish(self.r, port, t), True)
        fp_store_int(&self.r.port_app[port], PORT_SNI)

    def ensure_slot(self, unsigned int slot):
        """Make a counter slot usable (zeroed on first use; see clear_slot)."""
        cdef unsigned int chunk = slot // STATS_CHUNK
        if slot >= MAX_SLOTS:
            raise ValueError(f"counter slot out of range: {slot}")
        if self.r.chunks[chunk] == NULL:
            # Cache-line aligned, so two slots never share a line between workers.
            self.r.chunks[chunk] = <fp_stats*>aligned_alloc(64, STATS_CHUNK * sizeof(fp_stats))
            if self.r.chunks[chunk] == NULL:
                raise MemoryError()
            memset(self.r.chunks[chunk], 0, STATS_CHUNK * sizeof(fp_stats))

    def slot_in_use(self, unsigned int slot):
        """Whether a live route names the slot or a connection holds it. Once False
        it stays False until the slot is named in a route again."""
        cdef fp_stats* s
        if self._retired:
            self.quiesce()              # a replaced route names its slots until retired
        if slot >= MAX_SLOTS or self.r.chunks[slot // STATS_CHUNK] == NULL:
            return False
        s = stats_slot(self.r, slot)
        # routes first (acquire): a route's last release comes after its
        # connection took its `active` count.
        return fp_load_int(&s.routes) != 0 or fp_load_i64(&s.active) != 0

    def clear_slot(self, unsigned int slot):
        """Zero a slot that is no longer in use, so it can count something new."""
        if slot >= MAX_SLOTS or self.r.chunks[slot // STATS_CHUNK] == NULL:
            return
        if self.slot_in_use(slot):
            raise ValueError(f"counter slot {slot} is still in use")
        memset(stats_slot(self.r, slot), 0, sizeof(fp_stats))

    def set_app(self, int app_id, *, list targets, int app_slot, balance="round-robin",
                double connect_timeout=5.0, double idle_timeout=0.0, long max_connections=0,
                int proxy_protocol=0, bint accept_proxy_protocol=False,
                long max_connections_per_source=0, bint panic=True, source_mask=(32, 64),
                long max_in_preface=1024, double rate=0.0, double source_rate=0.0,
                allow=(), deny=(), proxy_senders=(), keepalive=None,
                double user_timeout=0.0, double max_duration=0.0,
                double down_check=0.0, double queue_timeout=0.0,
                double slow_start=0.0, maglev_keys=(), TlsContext tls=None):
        """Publish an app's route. targets: [(family, ip, port, slot, state, weight,
        backup[, max_connections, soft_limit])], with family 0 for a target not resolved (kept, never picked). The
        new route applies to new connections; established ones are not touched.
        allow, deny, proxy_senders: CIDR strings (admission.pxi). keepalive: (idle
        s, interval s, probes) or None; user_timeout: seconds, 0 = kernel default.
        max_duration: MaxConnectionDuration, seconds, 0 = none; down_check: with
        OnTargetDown close, how often each connection looks at its target (seconds;
        0 = keep connections to a target that went down) (lifetime.pxi).
        queue_timeout: how long a client waits while every target is at its
        max_connections (limits.pxi). slow_start: seconds a target that came up
        (target_came_up) takes to reach its full share (slowstart.pxi).
        maglev_keys: with balance "maglev", a stable 64-bit key per target (from its
        address: the same on every instance) (maglev.pxi). tls: the app's TLS (tls.pxi), None: plain TCP."""
        cdef fp_route* rt
        cdef fp_target* t
        cdef uint64_t* keys
        cdef int i, rc = 0
        if not 0 <= app_id < MAX_APPS:
            raise ValueError(f"app id out of range: {app_id}")
        policy = BALANCE[balance]
        self.ensure_slot(app_slot)
        for entry in targets:
            self.ensure_slot(entry[3])
        rt = <fp_route*>calloc(1, sizeof(fp_route))
        if rt == NULL:
            raise MemoryError()
        rt.targets = <fp_target*>calloc(max(1, len(targets)), sizeof(fp_target))
        if rt.targets == NULL:
            free(rt)
            raise MemoryError()
        try:
            for i, entry in enumerate(targets):
                family, host, port, slot, state, weight, backup = entry[:7]
                if not 1 <= weight <= 1000:
                    raise ValueError(f"weight out of range: {weight}")
                t = &rt.targets[i]
                t.slot = slot
                t.state = state
                t.weight = weight
                t.backup = backup
                if len(entry) > 7:
                    t.max_conns, t.soft_limit = entry[7], entry[8]
                    rt.limits = rt.limits or t.max_conns > 0 or t.soft_limit > 0
                if family:
                    fill_sockaddr(&t.addr, &t.addrlen, family, host.encode(), port)
            rt.ntargets = len(targets)
            if policy == BAL_ROUND_ROBIN and rt.ntargets:
                with nogil:  # n x (sum of weights) steps: let the other threads run
                    rc = build_wrr(rt)
                if rc < 0:
                    raise MemoryError()
            if policy == BAL_MAGLEV and rt.ntargets:
                if len(maglev_keys) != rt.ntargets:
                    raise ValueError("maglev needs one key per target")
                keys = <uint64_t*>malloc(rt.ntargets * sizeof(uint64_t))
                if keys == NULL:
                    raise MemoryError()
                for i in range(rt.ntargets):
                    keys[i] = maglev_keys[i]
                with nogil:
                    rc = build_maglev(rt, keys)
                free(keys)
                if rc < 0:
                    raise MemoryError()
        except BaseException:
            route_free(rt)
            raise
        rt.refcnt = 1
        rt.relay = self.r
        rt.app_slot = app_slot
        rt.balance = policy
        rt.proxy_protocol = proxy_protocol
        rt.connect_timeout_ms = <int64_t>(connect_timeout * 1000)
        rt.idle_timeout_ms = <int64_t>(idle_timeout * 1000)
        rt.max_conns = max_connections
        rt.accept_proxy = accept_proxy_protocol
        rt.panic = panic
        if keepalive:
            rt.ka_idle, rt.ka_interval, rt.ka_count = keepalive
        rt.user_timeout_ms = <unsigned int>(user_timeout * 1000)
        rt.max_duration_ms = <int64_t>(max_duration * 1000)
        rt.queue_timeout_ms = <int64_t>(queue_timeout * 1000)
        rt.slow_start_ms = <int64_t>(slow_start * 1000)
        rt.down_check_ms = max(<int64_t>TICK_MS, <int64_t>(down_check * 1000)) if down_check > 0 else 0
        if tls is not None:
            rt.tls = tls.share()
        try:
            rt.acl = acl_build(cidr_keys(allow), cidr_keys(deny), cidr_keys(proxy_senders))
        except BaseException:
            route_free(rt)
            raise
        rt.persource = self._persource(app_id, max_connections_per_source, source_rate)
        if rt.persource == NULL:
            route_free(rt)
            raise MemoryError()
        rt.persource.mask4, rt.persource.mask6 = source_mask
        rt.persource.max_preface = max_in_preface
        rt.persource.rate = rate
        rt.persource.source_rate = source_rate
        route_claim_slots(rt, 1)
        self._retire(<size_t>route_publish(self.r, app_id, rt), False)

    cdef fp_persource* _persource(self, int app_id, long limit, double source_rate):
        """The app's per-source table, kept from its current route so a reload
        does not forget who is connected; a new one if it had none. Its counters
        and buckets are allocated once needed, and kept."""
        cdef fp_persource* ps = NULL
        cdef void* table
        pthread_mutex_lock(&self.r.lock)
        if self.r.apps[app_id] != NULL and self.r.apps[app_id].persource != NULL:
            ps = self.r.apps[app_id].persource
            fp_incref(&ps.refcnt)
        pthread_mutex_unlock(&self.r.lock)
        if ps == NULL:
            ps = <fp_persource*>calloc(1, sizeof(fp_persource))
            if ps == NULL:
                return NULL
            ps.refcnt = 1
            pthread_mutex_init(&ps.lock, NULL)
        if limit > 0 and ps.counts == NULL:
            table = calloc(PERSOURCE_BUCKETS, sizeof(int))
            if table == NULL:
                persource_decref(ps)
                return NULL
            fp_store_ptr(<void**>&ps.counts, table)
        if source_rate > 0 and ps.buckets == NULL:
            table = calloc(PERSOURCE_BUCKETS, sizeof(fp_bucket))
            if table == NULL:
                persource_decref(ps)
                return NULL
            fp_store_ptr(<void**>&ps.buckets, table)
        ps.limit = limit
        return ps

    def remove_app(self, int app_id):
        if 0 <= app_id < MAX_APPS:
            self._retire(<size_t>route_publish(self.r, app_id, NULL), False)

    def close_target(self, unsigned int slot):
        """OnTargetDown close: the connections to the target counting in slot that
        were accepted until now are closed, each by its own worker within its app's
        down_check (lifetime.pxi)."""
        if slot >= MAX_SLOTS or self.r.chunks[slot // STATS_CHUNK] == NULL:
            raise IndexError(slot)
        fp_store_i64(&stats_slot(self.r, slot).closed_since_ms, monotonic_ms())

    @property
    def outlier_fd(self):
        """Readable (an eventfd) when a target crossed its app's ConsecutiveFailures:
        read it, then call outlier_take for each target (outlier.pxi)."""
        return self.r.outlier_fd

    def set_outlier_threshold(self, unsigned int slot, int threshold):
        """ConsecutiveFailures of the target counting in slot, 0: not watched."""
        self.ensure_slot(slot)
        fp_store_int(&stats_slot(self.r, slot).outlier_threshold, threshold)

    def outlier_take(self, unsigned int slot, bint reset):
        """Whether the target crossed its threshold since the last call (and clear
        that); reset: start its consecutive count again (it is being ejected)."""
        cdef fp_stats* st
        if slot >= MAX_SLOTS or self.r.chunks[slot // STATS_CHUNK] == NULL:
            return False
        st = stats_slot(self.r, slot)
        if reset:
            fp_store_i64(&st.consecutive, 0)
        return fp_xchg_int(&st.eject_pending, 0) != 0

    def target_came_up(self, unsigned int slot):
        """SlowStart: the target counting in slot came up now; its share ramps from
        here over its app's slow_start (slowstart.pxi)."""
        if slot >= MAX_SLOTS or self.r.chunks[slot // STATS_CHUNK] == NULL:
            raise IndexError(slot)
        fp_store_i64(&stats_slot(self.r, slot).up_since_ms, monotonic_ms())

    def set_target_state(self, int app_id, int index, int state):
        """Change one target's state in the app's current route, in place."""
        cdef fp_route* rt = route_get(self.r, app_id)
        if rt == NULL:
            raise KeyError(app_id)
        try:
            if not 0 <= index < rt.ntargets:
                raise IndexError(index)
            fp_store_int(&rt.targets[index].state, state)
        finally:
            route_decref(rt)

    # -- counters -------------------------------------------------------------

    def stats(self, unsigned int slot):
        """Counters of one slot, in STATS_FIELDS order."""
        cdef fp_stats* s
        if slot >= MAX_SLOTS or self.r.chunks[slot // STATS_CHUNK] == NULL:
            return (0,) * len(STATS_FIELDS)
        s = stats_slot(self.r, slot)
        return (fp_load_u64(&s.connections), fp_load_i64(&s.active),
                fp_load_u64(&s.bytes_in), fp_load_u64(&s.bytes_out),
                fp_load_u64(&s.connect_failures), fp_load_u64(&s.no_target),
                fp_load_u64(&s.rejected), fp_load_u64(&s.panic),
                fp_load_u64(&s.idle_timeouts), fp_load_u64(&s.local_errors),
                fp_load_u64(&s.proxy_errors), fp_load_u64(&s.rejected_per_source),
                fp_load_u64(&s.sni_unmatched), fp_load_u64(&s.sni_errors),
                fp_load_u64(&s.rejected_deny), fp_load_u64(&s.rejected_untrusted),
                fp_load_u64(&s.rejected_rate), fp_load_u64(&s.rejected_source_rate),
                fp_load_u64(&s.rejected_preface), fp_load_u64(&s.closed_max_duration),
                fp_load_u64(&s.closed_target_down), fp_load_u64(&s.saturated_hard),
                fp_load_u64(&s.saturated_soft), fp_load_u64(&s.queued),
                fp_load_u64(&s.rejected_saturated), fp_load_i64(&s.consecutive),
                fp_load_u64(&s.outlier_failures),
                fp_load_u64(&s.tls_handshakes),
                fp_load_u64(&s.tls_resumed), fp_load_u64(&s.tls_timeouts),
                fp_load_u64(&s.tls_errors), fp_load_u64(&s.tls_closed),
                fp_load_u64(&s.tls_target_errors), fp_load_u64(&s.tls_ktls))

    def connect_times(self, unsigned int slot):
        """A target slot's connect-time histogram: (counts per bucket, the last one above
        every bound in CONNECT_BUCKETS; the sum in seconds)."""
        cdef fp_stats* s
        if slot >= MAX_SLOTS or self.r.chunks[slot // STATS_CHUNK] == NULL:
            return (0,) * 16, 0.0
        s = stats_slot(self.r, slot)
        return (
            tuple(fp_load_u64(&s.connect_buckets[i]) for i in range(16)),
            fp_load_u64(&s.connect_us) / 1e6,
        )

    def connections(self):
        """Connections open in all workers (connecting or relaying)."""
        cdef int i, total = 0
        for i in range(self.r.nworkers):
            total += fp_load_int(&self.r.workers[i].nconns)
        return total

    def worker_connections(self):
        """Connections open in each worker: how evenly they are spread."""
        cdef int i
        return [fp_load_int(&self.r.workers[i].nconns) for i in range(self.r.nworkers)]

    # -- access log -----------------------------------------------------------

    def set_access_log(self, bint on):
        """Start (or stop) filling the access log rings; they are made on first use."""
        cdef int i
        cdef fp_alog* ring
        if on:
            for i in range(self.r.nworkers):
                if self.r.workers[i].alog == NULL:
                    ring = <fp_alog*>aligned_alloc(64, sizeof(fp_alog))
                    if ring == NULL:
                        raise MemoryError()
                    memset(ring, 0, sizeof(fp_alog))
                    fp_store_ptr(<void**>&self.r.workers[i].alog, ring)
        fp_store_int(&self.r.alog_on, on)

    def drain_access_log(self):
        """Records of connections ended since the last call: (time_ns, duration_ms,
        bytes_in, bytes_out, app_slot, target_slot, port, result, attempts, tls, client
        ip, client port); slots are NO_SLOT_ID where unknown; tls: None, or (server
        name or None, version, cipher or None) of a client that spoke TLS to us."""
        cdef int i
        cdef fp_alog* a
        cdef fp_alog_rec* rec
        cdef uint64_t tail, head
        cdef char text[INET6_ADDRSTRLEN]
        out = []
        for i in range(self.r.nworkers):
            a = <fp_alog*>fp_load_ptr(<void**>&self.r.workers[i].alog)
            if a == NULL:
                continue
            tail = a.tail
            head = fp_load_acq_u64(&a.head)
            while tail != head:
                rec = &a.recs[tail % ALOG_SLOTS]
                inet_ntop(rec.family, rec.client_addr, text, sizeof(text))
                tls = None
                if rec.tls_version:
                    tls = (rec.tls_sni.decode("ascii", "replace") if rec.tls_sni[0] else None,
                           TLS_VERSION_NAMES.get(rec.tls_version, hex(rec.tls_version)),
                           rec.tls_cipher.decode() if rec.tls_cipher != NULL else None)
                out.append((rec.time_ns, rec.duration_ms, rec.bytes_in, rec.bytes_out,
                            rec.app_slot, rec.tgt_slot, rec.port, rec.result, rec.attempts,
                            tls, text.decode(), rec.client_port))
                tail += 1
            fp_store_rel_u64(&a.tail, tail)
        return out

    def access_log_dropped(self):
        """Records lost to full rings since start."""
        cdef int i
        cdef fp_alog* a
        total = 0
        for i in range(self.r.nworkers):
            a = <fp_alog*>fp_load_ptr(<void**>&self.r.workers[i].alog)
            if a != NULL:
                total += fp_load_u64(&a.dropped)
        return total


# -- test entry points: the parsers, on bytes from Python (fuzzed in the tests) --

cdef object sockaddr_tuple(sockaddr_storage* ss):
    cdef char text[INET6_ADDRSTRLEN]
    cdef sockaddr_in* a4 = <sockaddr_in*>ss
    cdef sockaddr_in6* a6 = <sockaddr_in6*>ss
    if ss.ss_family == AF_INET:
        inet_ntop(AF_INET, &a4.sin_addr, text, sizeof(text))
        return (text.decode(), ntohs(a4.sin_port))
    inet_ntop(AF_INET6, &a6.sin6_addr, text, sizeof(text))
    return (text.decode(), ntohs(a6.sin6_port))


cdef class GuardedBytes:
    """A copy of some bytes ending right at an inaccessible page: a parser that
    reads one byte past them crashes the process instead of going unnoticed."""
    cdef uint8_t* map
    cdef size_t maplen
    cdef uint8_t* data
    cdef size_t n

    def __cinit__(self, bytes data):
        cdef size_t page = 4096
        self.n = len(data)
        self.maplen = (self.n + page - 1) // page * page + page
        self.map = <uint8_t*>mmap(NULL, self.maplen, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if self.map == <uint8_t*>MAP_FAILED:
            self.map = NULL
            raise MemoryError()
        if mprotect(self.map + self.maplen - page, page, PROT_NONE) < 0:
            raise OSError(errno, "mprotect failed")
        self.data = self.map + self.maplen - page - self.n
        memcpy(self.data, <const char*>data, self.n)

    def __dealloc__(self):
        if self.map != NULL:
            munmap(self.map, self.maplen)


def parse_proxy_header_for_tests(bytes data):
    """(length, source, destination) with source/destination (ip, port) or None
    when the header does not carry them; 0: incomplete; -1: invalid."""
    cdef GuardedBytes g = GuardedBytes(data)
    cdef sockaddr_storage src, dst
    cdef bint carried = False
    cdef int rc
    with nogil:
        rc = proxy_parse(g.data, g.n, &src, &dst, &carried)
    if rc <= 0:
        return rc
    if carried:
        return (rc, sockaddr_tuple(&src), sockaddr_tuple(&dst))
    return (rc, None, None)


def parse_client_hello_for_tests(bytes data):
    """The server name (str), None when the hello has none, 0: incomplete, -1:
    malformed, as the relay sees the first len(data) bytes of a connection."""
    cdef GuardedBytes g = GuardedBytes(data)
    cdef GuardedBytes hello = GuardedBytes(bytes(SNI_MAX))
    cdef uint8_t* name = NULL
    cdef size_t name_len = 0, want = 0
    cdef int rc
    with nogil:
        rc = sni_parse(g.data, g.n, hello.data, &name, &name_len, &want)
    if rc == SNI_FOUND:
        return (<char*>name)[:name_len].decode("latin-1")
    if rc == SNI_ABSENT:
        return None
    return rc


def source_bucket_for_tests(str ip, int mask4=32, int mask6=64):
    """The per-source bucket the relay counts a client from ip in (persource.pxi)."""
    cdef fp_persource ps
    cdef sockaddr_storage ss
    cdef socklen_t length
    family = AF_INET6 if ":" in ip else AF_INET
    fill_sockaddr(&ss, &length, family, ip.encode(), 0)
    ps.mask4 = mask4
    ps.mask6 = mask6
    return source_bucket(&ps, &ss)


def admission_cost_for_tests(str ip, int repeat, allow=(), deny=(), double rate=0.0,
                             double source_rate=0.0):
    """Thread CPU ns per admit_at_accept() (admission.pxi) for a client from ip,
    repeated: what admission control costs the relay per accepted client."""
    cdef fp_worker* w = <fp_worker*>calloc(1, sizeof(fp_worker))
    cdef fp_route rt
    cdef fp_persource* ps = <fp_persource*>calloc(1, sizeof(fp_persource))
    cdef fp_stats st
    cdef sockaddr_storage ss
    cdef socklen_t length
    cdef int i
    if w == NULL or ps == NULL:
        free(w)
        free(ps)
        raise MemoryError()
    memset(&rt, 0, sizeof(rt))
    memset(&st, 0, sizeof(st))
    ps.refcnt = 1
    pthread_mutex_init(&ps.lock, NULL)
    ps.mask4, ps.mask6 = 32, 64
    ps.rate, ps.source_rate = rate, source_rate
    if source_rate > 0:
        ps.buckets = <fp_bucket*>calloc(PERSOURCE_BUCKETS, sizeof(fp_bucket))
    rt.persource = ps
    fill_sockaddr(&ss, &length, AF_INET6 if ":" in ip else AF_INET, ip.encode(), 0)
    try:
        rt.acl = acl_build(cidr_keys(allow), cidr_keys(deny), [])
        start = time.thread_time_ns()
        with nogil:
            for i in range(repeat):
                w.now_ms = i            # a fresh millisecond each time: buckets refill
                admit_at_accept(w, &rt, &st, &ss, True)
        return (time.thread_time_ns() - start) / repeat
    finally:
        acl_free(rt.acl)
        persource_decref(ps)
        free(w)


def preface_need_for_tests(bytes data, bint proxy):
    """For a PROXY header (proxy) or TLS records the relay finds incomplete in data:
    how many bytes it waits for before parsing again; 0 when data is complete or bad."""
    cdef GuardedBytes g = GuardedBytes(data)
    cdef GuardedBytes hello = GuardedBytes(bytes(SNI_MAX))
    cdef sockaddr_storage src, dst
    cdef bint carried = False
    cdef uint8_t* name = NULL
    cdef size_t name_len = 0, want = 0
    with nogil:
        if proxy:
            if proxy_parse(g.data, g.n, &src, &dst, &carried) == PP_NEED_MORE:
                want = proxy_need(g.data, g.n)
        elif sni_parse(g.data, g.n, hello.data, &name, &name_len, &want) != SNI_NEED_MORE:
            want = 0
    return want
