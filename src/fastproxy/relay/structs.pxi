# Data layout of the relay. Everything here is touched without the GIL.
#
# Ownership: the Python thread builds routes and swaps them in under relay.lock;
# a worker owns every connection it accepted, from accept to free, so connections
# need no locking. Counters are shared and updated with relaxed atomics.

# What an epoll event points at: the first int of every registered object.
cdef enum HandleKind:
    KIND_LISTENER = 1
    KIND_SIDE = 2
    KIND_WAKE = 3

cdef enum ConnList:
    LIST_RETRY = 1
    LIST_GRAVE = 2

cdef enum ConnState:
    ST_NEW = 0
    ST_CONNECTING = 1
    ST_RETRY = 2        # the connect failed; retried after the current event batch
    ST_RELAYING = 3
    ST_CLOSED = 4       # freed after the current event batch (the retry pass buries
                        # one that closed while queued for a retry)
    ST_PREFACE = 5      # reading a PROXY header and/or a TLS ClientHello (preface.pxi)
    ST_FAILING = 6      # one side failed: what it sent still goes to the other side,
                        # for up to RESET_GRACE_MS (with no deadline but the idle
                        # timeout when its FIN came first), then that side is reset
    ST_QUEUED = 7       # every target at its MaxConnections: waiting (limits.pxi)
    ST_HANDSHAKE = 8    # a TLS handshake, with the client or the target (tls.pxi)

# Target states, set by the orchestrator. Only T_UP is picked, except in panic
# mode (no target up) where T_DOWN ones are tried too; draining and disabled never.
# Backup targets are picked only while no other target is up.
cdef enum TargetState:
    T_UP = 0
    T_DOWN = 1
    T_DRAINING = 2
    T_DISABLED = 3

# Which targets a client may be sent to, first match wins (see pick_first).
cdef enum Tier:
    TIER_PRIMARY = 0            # up, not backup
    TIER_BACKUP = 1             # up, backup: no primary is up
    TIER_PANIC = 2              # up or down, any: nothing is up

cdef enum Balance:
    BAL_ROUND_ROBIN = 0
    BAL_LEAST_CONN = 1
    BAL_RANDOM = 2
    BAL_SOURCE_HASH = 3
    BAL_MAGLEV = 4              # maglev.pxi

cdef enum:
    STATS_CHUNK = 256          # slots per chunk
    STATS_CHUNKS = 1024        # up to 262,144 counter slots
    MAX_APPS = 65536
    MAX_EVENTS = 256
    ACCEPT_BATCH = 1024        # accept until the queue is empty: a full one costs clients 1 s (profiles/concurrent.md)
    POOL_MAX = 256             # idle pipes / buffers kept per worker
    SMALL_BUF = 16384          # splice mode: recv() buffer for small messages
    PUMP_BUDGET = 1048576      # bytes one direction moves per wake-up before yielding
    TICK_MS = 100              # timer resolution (timers.pxi)
    WHEEL_SLOTS = 256          # one turn of the timer wheel: 25.6 s
    IDLE_WAIT_MS = 1000        # longest sleep, when no timer is due sooner (timers_wait_ms)
    PERSOURCE_BUCKETS = 4096   # per-source counters per app (16 KiB)
    PREFACE_TIMEOUT_MS = 5000  # time a client has to send its PROXY header / ClientHello
    PP_MAX = 536               # longest PROXY header read: v2 16 + 520 (v1 is 107)
    SNI_MAX = 16384            # ClientHello bytes read before giving up
    PORT_SNI = -2              # port_app value: route this port by server name
    ALOG_SLOTS = 4096          # access log records per worker ring
    RESET_GRACE_MS = 2000      # a failed side's bytes get this long to reach the other
    HANDOFF_SLOTS = 256        # accepted clients waiting for another worker (handoff.pxi)


# One counter slot per app and per (app, target). A connection keeps pointers to
# its slots across reloads, and routes name them: a slot is in use while a route
# naming it is alive (`routes`) or a connection holds it (`active`). The
# orchestrator hands a slot out again only once neither holds, zeroed.
ctypedef struct fp_stats:
    uint64_t connections
    int64_t active
    uint64_t bytes_in           # client -> target
    uint64_t bytes_out          # target -> client
    uint64_t connect_failures
    uint64_t no_target          # clients closed because no target answered
    uint64_t rejected           # over MaxConnections
    uint64_t panic              # picks made with no target up
    uint64_t idle_timeouts
    uint64_t local_errors       # clients closed for a local shortage (fds, ports, memory)
    uint64_t proxy_errors       # no valid PROXY header in time
    uint64_t rejected_per_source    # over MaxConnectionsPerSource
    uint64_t sni_unmatched      # server name of no app, and no default app
    uint64_t sni_errors         # malformed, truncated or late ClientHello
    # Admission control (admission.pxi): clients closed at accept, by reason
    uint64_t rejected_deny          # not in Allow, or in Deny
    uint64_t rejected_untrusted     # a PROXY header expected from a sender not trusted
    uint64_t rejected_rate          # over MaxConnectionRate
    uint64_t rejected_source_rate   # over MaxConnectionRatePerSource
    uint64_t rejected_preface       # over MaxConnectionsInPreface
    # TLS (tls.pxi): client handshakes done, of which resumed; failed, by reason
    uint64_t tls_handshakes
    uint64_t tls_resumed
    uint64_t tls_timeouts           # no complete handshake within the timeout
    uint64_t tls_errors             # not TLS, no shared version or cipher, a bad certificate
    uint64_t tls_closed             # the client left during its handshake
    uint64_t tls_target_errors      # reencrypt: the target's handshake or certificate failed
    uint64_t tls_ktls               # client connections whose kernel took TLS (tx, rx or both)
    int routes                  # live routes naming this slot
    int _pad_int
    # Connect times of a target (CONNECT_BUCKETS_US; the last bucket: above them all)
    uint64_t connect_buckets[16]
    uint64_t connect_us         # their sum, microseconds
    # Target-aware balancing (lifetime.pxi): closes by reason, counted in the app's
    # slot; a target's slot holds when it was last taken down with OnTargetDown
    # close (CLOCK_MONOTONIC ms): its connections accepted before then are closed.
    uint64_t closed_max_duration
    uint64_t closed_target_down
    int64_t closed_since_ms
    # Per-target limits (limits.pxi): picks that passed a target over at its hard or
    # soft limit (target slots); clients that waited, and clients closed because
    # every target stayed at its hard limit (app slots).
    uint64_t saturated_hard
    uint64_t saturated_soft
    uint64_t queued
    uint64_t rejected_saturated
    int64_t up_since_ms         # SlowStart (slowstart.pxi): when the target last came up
    # Outlier detection (outlier.pxi), target slots: failures since the last success,
    # all of them, the app's ConsecutiveFailures (0: off), and "over it, not yet seen
    # by the orchestrator". The struct stays a multiple of 64 bytes (asserted).
    int64_t consecutive
    uint64_t outlier_failures
    int outlier_threshold
    int eject_pending
    uint64_t _pad[1]            # a multiple of 64 bytes: no false sharing between slots


ctypedef struct fp_target:
    sockaddr_storage addr
    socklen_t addrlen           # 0: not resolved, never picked
    uint32_t slot
    uint32_t weight             # 1..1000
    bint backup
    int state                   # TargetState, written by Python at any time
    int64_t max_conns           # MaxConnections of the target (hard), 0: none (limits.pxi)
    int64_t soft_limit          # SoftLimit, 0: none


# What an app remembers of its clients across reloads (persource.pxi, admission.pxi):
# concurrent connections per source (the address masked by SourceMask) in a
# fixed-size table of atomic counters indexed by a keyed hash (SipHash, a random
# key per process, so no one can pick addresses that share a victim's bucket),
# token buckets for the connection rates, and clients still in their preface.
# Shared by every route of the app across reloads (refcounted). Two sources in one
# bucket share it: collisions may over-count (turn a client away early), never
# under-count.
ctypedef struct fp_bucket:
    double tokens
    int64_t last_ms

ctypedef struct fp_persource:
    int refcnt
    int64_t limit               # MaxConnectionsPerSource, 0: unlimited
    int mask4                   # SourceMask: prefix lengths of the key
    int mask6
    int in_preface              # clients of the app still sending their preface
    int max_preface             # MaxConnectionsInPreface
    double rate                 # MaxConnectionRate, 0: unlimited
    double source_rate          # MaxConnectionRatePerSource, 0: unlimited
    pthread_mutex_t lock        # guards the token buckets
    fp_bucket app_bucket
    fp_bucket* buckets          # PERSOURCE_BUCKETS, once a source rate is set
    int* counts                 # PERSOURCE_BUCKETS, once a limit is set

cdef struct fp_acl

cdef struct fp_relay

cdef struct fp_tls_ctx         # relay/tls.pxi
cdef struct fp_tls


# An app's routing table. Immutable once published except for target states and
# the round-robin cursor; replaced whole on reload. Refcounted because a connecting
# client keeps it for failover.
#
# Round robin walks `wrr`, one cycle of smooth weighted round robin (nginx's) over
# all targets, computed when the route is built: the shared cursor `rr` is the only
# state, moved with compare-and-swap, so workers need no lock and together follow
# the exact sequence.
ctypedef struct fp_route:
    int refcnt
    fp_relay* relay
    int ntargets
    fp_target* targets
    uint32_t app_slot
    int balance
    int proxy_protocol          # 0 none, 1 v1, 2 v2
    int64_t connect_timeout_ms
    int64_t idle_timeout_ms
    int64_t max_conns           # 0: unlimited
    int64_t max_duration_ms     # MaxConnectionDuration, 0: unlimited (lifetime.pxi)
    int64_t down_check_ms       # OnTargetDown close: how often a connection looks, 0: keep
    bint limits                 # some target has MaxConnections or SoftLimit (limits.pxi)
    int64_t queue_timeout_ms    # QueueTimeout: how long a client waits for a target under its hard limit
    int64_t slow_start_ms       # SlowStart, 0: off (slowstart.pxi)
    bint accept_proxy           # clients start with a PROXY header
    bint panic                  # no target up: try the ones not taken out by an operator
    fp_persource* persource     # per-source counters, rates, preface count (never NULL)
    fp_acl* acl                 # Allow, Deny, trusted PROXY senders, or NULL (admission.pxi)
    int ka_idle                 # TcpKeepalive (sockopts.pxi): seconds, 0: off
    int ka_interval
    int ka_count
    unsigned int user_timeout_ms    # TcpUserTimeout, 0: the kernel's default
    fp_tls_ctx* tls             # the app's TLS (tls.pxi), or NULL: plain TCP
    uint32_t rr                 # cursor: into wrr (round robin), or a tie breaker
    uint32_t* wrr               # target indexes; NULL unless round robin, or maglev's
                                # lookup table (maglev.pxi)
    uint32_t nwrr


ctypedef struct fp_listener:
    int kind                    # KIND_LISTENER
    int fd
    int port                    # bound port; 0 when steered (look up the local port)
    void* next


# One direction of a connection: bytes read from one side wait here (in a pipe,
# or a buffer) until the other side takes them. Copy mode only uses buffers. Splice
# mode reads small messages into a SMALL_BUF buffer with recv() (no EAGAIN splice
# per message) and moves a direction to the pipe once a read fills that buffer
# (HAProxy's splice-auto); the held bytes are in one place only, so order holds. A
# direction that must copy (TLS) takes chan_cap buffers in either mode (pool.pxi).
ctypedef struct fp_chan:
    int pipe_r
    int pipe_w
    char* buf
    size_t buf_size             # bytes of buf (pool.pxi: chan_buf_cap)
    size_t len                  # bytes held
    size_t off                  # start of the held bytes in buf
    bint piped                  # the held bytes are in the pipe, not in buf
    bint bulk                   # splice mode: the next read from empty goes to the pipe
    int state                   # ChanState: how far its end has got (direction.pxi)
    bint copy_only              # never a pipe: one of its sides speaks TLS (tls.pxi)

cdef struct fp_conn

# Which app a server name goes to, on a port shared by apps with ServerNames.
# Immutable once published, replaced whole on reload, refcounted like routes.
ctypedef struct fp_sni_name:
    const char* name            # lower case; for a wildcard, the suffix with its dot
    int len
    bint wildcard
    int app

ctypedef struct fp_sni:
    int refcnt
    int nnames
    fp_sni_name* names          # exact names first, then wildcards, longest first
    char* blob                  # the names' bytes
    int default_app             # -1: none
    bint accept_proxy
    bint need_local             # some app sends a PROXY header: keep the local address
    uint32_t count_slot         # the app slot counting errors before an app is known
    int count_app               # its app: whose trusted PROXY senders apply at accept

ctypedef struct fp_side:
    int kind                    # KIND_SIDE
    int fd
    fp_conn* conn
    bint readable               # edge-triggered readiness, cleared on EAGAIN
    bint writable
    bint hup                    # the peer's FIN, or an error, has been signalled
    bint fin                    # the peer's FIN signalled with no error: every byte
                                # before it is queued, so a short recv reached the end
    bint muted                  # EPOLLIN dropped while its channel cannot drain
    int mark                    # UrgentMark: whether an urgent mark may be ahead of
                                # the reader (direction.pxi)
    SSL* ssl                    # its TLS (tls.pxi), or NULL: bytes go with recv/send
    int ktls                    # KTLS_TX / KTLS_RX: the kernel does that direction's TLS,
                                # bytes go with recv/send/splice again (tls.pxi)

cdef struct fp_conn:
    # Hot while relaying: this first cache line (conn_new aligns it) and the sides
    # and channels right after it are all a pump touches.
    int state
    bint ready                  # on the worker's ready list: out of budget, not of data
    int tslot                   # timer wheel slot, -1: no timer (timers.pxi)
    int64_t last_active_ms
    int64_t idle_timeout_ms
    fp_stats* app_st
    fp_stats* tgt_st
    uint64_t bytes_in
    uint64_t bytes_out
    fp_side cli
    fp_side srv
    fp_chan up                  # client -> target
    fp_chan down                # target -> client
    fp_conn* ready_next
    fp_conn* tprev              # timer wheel slot links
    fp_conn* tnext
    # Connecting and failover
    fp_route* route             # held while connecting, for failover
    int target_idx              # the target being tried, then the connected one
    int start_idx               # first target picked; failover walks on from it
    int tries
    int tier                    # Tier the first pick came from; failover stays in it
    int64_t deadline_ms         # connect deadline, or the end of the reset grace
    int64_t connect_start_us    # when the current connect began (its time is measured)
    fp_side* failed             # ST_FAILING: the side that failed
    bint fin_first              # ST_FAILING: its FIN came before its error (conn_fail)
    int unacked                 # ST_FAILING after a FIN: bytes the other side had not
                                # acknowledged at the last look, -1 before the first
    sockaddr_storage peer       # the client
    sockaddr_storage local      # where the client connected to
    # PROXY in, SNI, per-source limits and the access log (preface.pxi, accesslog.pxi)
    fp_sni* sni                 # held while reading the ClientHello
    fp_persource* persource     # held while counted against a client address
    int src_bucket              # -1: counted nowhere (no limit)
    fp_persource* prefacing     # held while counted in the app's clients in preface
    int port                    # the port the client dialled
    uint32_t app_slot
    uint32_t tgt_slot
    int attempts                # connects started
    int result                  # AccessResult, set where the connection is given up
    bint timed_out              # a connect attempt timed out
    bint preface_proxy          # still expecting the PROXY header
    uint32_t preface_need       # bytes the client must have sent before its preface
                                # is worth parsing again (preface.pxi)
    int64_t start_ms
    fp_conn* prev
    fp_conn* next
    # A connection is on at most one of the two lists below, and each has its own
    # link, so that one list can never swallow the other's tail.
    fp_conn* retry_next         # queued to try the next target after the batch
    fp_conn* grave_next         # closed, freed after the batch
    int lists                   # debug builds: the lists it is on (LIST_* bits)
    bint outlier_seen           # its target's success or failure is counted (outlier.pxi)
    # Closing on the proxy's initiative (lifetime.pxi)
    int64_t end_ms              # MaxConnectionDuration (with its jitter) ends it, 0: never
    int64_t check_every_ms      # OnTargetDown close: look at the target this often, 0: never
    int64_t next_check_ms
    fp_tls* tls                 # TLS state beyond the sides' SSLs (tls.pxi), or NULL

# One ended connection, as the access log needs it.
ctypedef struct fp_alog_rec:
    int64_t time_ns             # wall clock at the end
    int64_t duration_ms
    uint64_t bytes_in
    uint64_t bytes_out
    uint32_t app_slot           # 0xffffffff: no app known
    uint32_t tgt_slot           # 0xffffffff: no target tried
    int port
    int result
    int attempts
    int family                  # of the client address
    uint16_t client_port
    uint8_t client_addr[16]
    # TLS (tls.pxi: tls_alog): the protocol version (0: not TLS), cipher (OpenSSL's
    # static name, or NULL) and the client's server name (cut at 127 bytes)
    int tls_version
    const char* tls_cipher
    char tls_sni[128]

# Single producer (the worker) / single consumer (the Python drain thread) ring.
ctypedef struct fp_alog:
    uint64_t head               # written by the worker
    uint64_t _pad1[7]
    uint64_t tail               # written by the consumer
    uint64_t _pad2[7]
    uint64_t dropped            # records lost to a full ring
    fp_alog_rec recs[ALOG_SLOTS]

# A client one worker accepted for another (handoff.pxi).
ctypedef struct fp_handoff:
    int fd
    int port                    # the listener's port, 0 when steered
    sockaddr_storage peer

ctypedef struct fp_worker:
    int kind                    # KIND_WAKE: the eventfd points here
    int index
    int epfd
    int wakefd
    pthread_t thread
    bint started
    fp_relay* relay
    int stop
    int epoch                   # bumped after every event batch (see Relay.quiesce)
    int exited                  # the thread has left its loop
    int nconns                  # live connections, read by Python and other workers
    int handed                  # clients in the inbox, read by other workers
    pthread_mutex_t inbox_lock  # guards inbox and handed
    fp_handoff* inbox           # HANDOFF_SLOTS clients accepted for us elsewhere
    int nconnecting
    int nfailing
    int reserve_fd              # spare descriptor, given up to shed a client on EMFILE
    char* bounce                # small buffer to step past TCP urgent marks
    uint8_t* hello              # SNI_MAX bytes: the handshake message reassembled
    fp_alog* alog               # access log ring, NULL while the log is off
    int64_t now_ms
    int64_t wheel_tick          # the last tick run (now_ms // TICK_MS)
    fp_conn* wheel[WHEEL_SLOTS] # timers.pxi
    uint64_t rng
    fp_conn* conns
    fp_conn* retry
    fp_conn* graveyard
    fp_conn* ready              # connections to pump again before sleeping
    int* pipes                  # pool: pairs of fds
    int npipes
    char** bufs                 # pool: chan_cap bytes (copy) or SMALL_BUF (splice)
    int nbufs
    char** big_bufs             # pool, splice mode: chan_cap bytes for TLS directions
    int nbig_bufs
    # What this worker holds (debug.pxi), so a test can prove that every path
    # gives it back; written by this worker only.
    int held_conns              # fp_conn allocated and not yet freed
    int held_sockets            # client and target sockets open
    int held_pipes              # pipes held by channels (not the idle pool)
    int held_bufs               # buffers held by channels (not the idle pool)
    uint64_t _pad[8]            # workers sit side by side: keep each off its neighbour's lines

cdef struct fp_relay:
    int nworkers
    fp_worker* workers
    bint use_splice
    bint handoff                # pass clients to less loaded workers (handoff.pxi)
    size_t chan_cap             # bytes a channel may hold: pipe or buffer size
    int pipe_size               # F_SETPIPE_SZ value, 0 = kernel default
    pthread_mutex_t lock        # guards apps[] swaps and the listener list
    fp_route** apps
    int* port_app               # 65536 entries: app id, -1, or PORT_SNI
    fp_sni** port_sni           # 65536 entries: the port's server name table
    int alog_on                 # access log wanted (rings exist once it was)
    fp_stats** chunks
    fp_listener* listeners
    int outlier_fd              # eventfd: a target crossed its ConsecutiveFailures (outlier.pxi)
