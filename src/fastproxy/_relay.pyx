# cython: language_level=3
"""The hot path: an epoll loop per worker thread, run without the GIL, moving
bytes socket -> pipe -> socket with splice() (or recv/send in copy mode).

Layout (after uvloop): this file only stitches the parts together.
  includes/system.pxd   kernel and libc declarations, all nogil
  relay/structs.pxi     data layout and ownership rules
  relay/debug.pxi       invariant checks and leak counters of debug builds
  relay/routes.pxi      counter slots, per-app routes, PROXY protocol header
  relay/proxyproto.pxi  PROXY protocol in: the header parser
  relay/sni.pxi         ClientHello parser, server name tables
  relay/persource.pxi   per-source counters (SourceMask, keyed hash)
  relay/admission.pxi   Allow / Deny, trusted PROXY senders, rates, preface bound
  relay/accesslog.pxi   access log rings
  relay/pool.pxi        per-worker pipe and buffer pools
  relay/balance.pxi     target selection and failover order
  relay/limits.pxi      per-target MaxConnections / SoftLimit, QueueTimeout
  relay/slowstart.pxi   SlowStart: a target that came up ramps its share
  relay/outlier.pxi     outlier detection: failures counted as they happen
  relay/maglev.pxi      Balance: maglev, the consistent hash table
  relay/sockopts.pxi    per-app TCP options: keepalive, user timeout
  relay/lifetime.pxi    closes on the proxy's initiative: MaxConnectionDuration,
                        OnTargetDown close
  relay/direction.pxi   one direction's state machine: how its stream ends
  relay/conn.pxi        the connection state machine
  relay/tlsctx.pxi      TLS contexts, handshake callbacks, ticket keys (OpenSSL)
  relay/tls.pxi         TLS termination and re-encryption of connections
  relay/preface.pxi     before connecting: PROXY header, ClientHello, limits
  relay/worker.pxi      the event loop
  relay/api.pxi         the Relay class the orchestrator drives
  relay/harness.pxi     test-only: drive a worker by hand, one event batch at a time
                        (compiled in only with FASTPROXY_HARNESS=1: `make build`)
"""

from libc.math cimport log
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memmove, memset, strlen, strncpy

from fastproxy.includes.system cimport *
from fastproxy.includes.openssl cimport *

include "relay/structs.pxi"
include "relay/debug.pxi"
include "relay/routes.pxi"
include "relay/proxyproto.pxi"
include "relay/sni.pxi"
include "relay/persource.pxi"
include "relay/admission.pxi"
include "relay/accesslog.pxi"
include "relay/pool.pxi"
include "relay/balance.pxi"
include "relay/limits.pxi"
include "relay/slowstart.pxi"
include "relay/outlier.pxi"
include "relay/maglev.pxi"
include "relay/sockopts.pxi"
include "relay/direction.pxi"
include "relay/conn.pxi"
include "relay/tlsctx.pxi"
include "relay/tls.pxi"
include "relay/handoff.pxi"
include "relay/preface.pxi"
include "relay/lifetime.pxi"
include "relay/timers.pxi"
include "relay/worker.pxi"
include "relay/api.pxi"
IF FP_HARNESS:
    include "relay/harness.pxi"
