# SNI routing: the ClientHello parser and the per-port table of server names.
# The parser is a pure function of the bytes peeked so far (fuzzed from Python
# through parse_client_hello_for_tests); every length is checked against what
# was read before it is used.

cdef enum:
    SNI_MALFORMED = -1
    SNI_NEED_MORE = 0
    SNI_FOUND = 1
    SNI_ABSENT = 2          # a whole ClientHello without a host name
    TLS_RECORD_MAX = 16384


cdef inline size_t be16(const uint8_t* p) noexcept nogil:
    return (<size_t>p[0] << 8) | p[1]


cdef int hello_server_name(uint8_t* p, size_t n, uint8_t** name,
                           size_t* name_len) noexcept nogil:
    """Find the host_name in a ClientHello body p[0:n] (after its 4-byte header)."""
    cdef size_t off = 34, end, elen, etype, q, qend, nl
    if n < off + 1:
        return SNI_MALFORMED
    off += 1 + p[off]                           # session id
    if p[34] > 32 or off + 2 > n:
        return SNI_MALFORMED
    elen = be16(p + off)                        # cipher suites
    off += 2 + elen
    if elen < 2 or elen & 1 or off + 1 > n:
        return SNI_MALFORMED
    off += 1 + p[off]                           # compression methods
    if off > n:
        return SNI_MALFORMED
    if off == n:
        return SNI_ABSENT                       # no extensions at all
    if off + 2 > n:
        return SNI_MALFORMED
    end = off + 2 + be16(p + off)
    off += 2
    if end > n:
        return SNI_MALFORMED
    while off < end:
        if end - off < 4:
            return SNI_MALFORMED
        etype = be16(p + off)
        elen = be16(p + off + 2)
        off += 4
        if elen > end - off:
            return SNI_MALFORMED
        if etype == 0:                          # server_name
            if elen < 2 or be16(p + off) + 2 > elen:
                return SNI_MALFORMED
            q = off + 2
            qend = q + be16(p + off)
            while q < qend:
                if qend - q < 3:
                    return SNI_MALFORMED
                nl = be16(p + q + 1)
                if nl > qend - q - 3:
                    return SNI_MALFORMED
                if p[q] == 0:                   # host_name
                    if nl == 0 or nl > 255:
                        return SNI_MALFORMED
                    name[0] = p + q + 3
                    name_len[0] = nl
                    return SNI_FOUND
                q += 3 + nl
            return SNI_ABSENT
        off += elen
    return SNI_ABSENT


cdef int sni_parse(const uint8_t* b, size_t n, uint8_t* hello, uint8_t** name,
                   size_t* name_len, size_t* want) noexcept nogil:
    """The server name in the TLS records at b[0:n]: SNI_FOUND (name points into
    hello), SNI_ABSENT, SNI_NEED_MORE or SNI_MALFORMED. The ClientHello may span
    several records: their payloads are gathered in hello (SNI_MAX bytes).
    SNI_NEED_MORE sets want: how long the stream must at least be (at most SNI_MAX)
    before parsing it again can tell more, so that a hello trickled in byte by byte
    is parsed a bounded number of times (the payload still missing, and a header
    for every record it may come in, shrinks geometrically), not once per byte."""
    cdef size_t off = 0, have = 0, need = 0, rlen, rest, stream
    while need == 0 or have < need:
        # handshake payload still to come: the message, or at least its header
        rest = (need if need else 4) - have
        if n - off < 5:
            if n > off and b[off] != 22:
                return SNI_MALFORMED
            # the first bytes of all are checked as they come: not TLS is told early
            stream = n + 1 if n < 2 else off + 5 + rest
            want[0] = stream if stream < SNI_MAX else SNI_MAX
            return SNI_NEED_MORE
        if b[off] != 22 or b[off + 1] != 3:     # a handshake record, TLS 1.x
            return SNI_MALFORMED
        rlen = be16(b + off + 3)
        if rlen == 0 or rlen > TLS_RECORD_MAX:
            return SNI_MALFORMED
        if n - off - 5 < rlen:
            stream = off + 5 + rlen + (5 + rest - rlen if rest > rlen else 0)
            want[0] = stream if stream < SNI_MAX else SNI_MAX
            return SNI_NEED_MORE
        if have + rlen > SNI_MAX:
            return SNI_MALFORMED
        memcpy(hello + have, b + off + 5, rlen)
        have += rlen
        off += 5 + rlen
        if need == 0 and have >= 4:
            if hello[0] != 1:                   # client_hello
                return SNI_MALFORMED
            need = 4 + ((<size_t>hello[1] << 16) | (<size_t>hello[2] << 8) | hello[3])
            if need > SNI_MAX:
                return SNI_MALFORMED
    return hello_server_name(hello + 4, need - 4, name, name_len)


cdef int sni_lookup(fp_sni* t, uint8_t* name, size_t n) noexcept nogil:
    """The app for a server name: exact names first, then the longest wildcard
    suffix (the table keeps them in that order), then the port's default."""
    cdef size_t i
    cdef fp_sni_name* e
    if name == NULL:
        return t.default_app
    for i in range(n):
        if 65 <= name[i] <= 90:
            name[i] += 32
    for i in range(<size_t>t.nnames):
        e = &t.names[i]
        if e.wildcard:
            if n > <size_t>e.len and memcmp(name + n - e.len, e.name, e.len) == 0:
                return e.app
        elif <size_t>e.len == n and memcmp(name, e.name, n) == 0:
            return e.app
    return t.default_app


cdef void sni_free(fp_sni* t) noexcept nogil:
    free(t.names)
    free(t.blob)
    free(t)


cdef inline void sni_decref(fp_sni* t) noexcept nogil:
    if fp_decref(&t.refcnt) == 0:
        sni_free(t)


cdef fp_sni* sni_get(fp_relay* r, int port) noexcept nogil:
    """The port's server name table with a reference held, or NULL."""
    cdef fp_sni* t = <fp_sni*>fp_load_ptr(<void**>&r.port_sni[port])
    if t != NULL:           # safe without a lock: see route_get
        fp_incref(&t.refcnt)
    return t


cdef fp_sni* sni_publish(fp_relay* r, int port, fp_sni* t) noexcept nogil:
    """Swap in a new table (or NULL); the caller retires the old one."""
    cdef fp_sni* old
    pthread_mutex_lock(&r.lock)
    old = r.port_sni[port]
    fp_store_ptr(<void**>&r.port_sni[port], t)
    pthread_mutex_unlock(&r.lock)
    return old
