# TLS termination and re-encryption (SPEC §14), in the worker threads without the GIL.
#
# An app with `Tls` has a context (fp_tls_ctx: one SSL_CTX per certificate, the first the
# default, and for `reencrypt` a client SSL_CTX verifying targets), built by Python
# (TlsContext below) and held by the app's route. A client of such an app, once its
# PROXY header (if any) is read and its source admitted, shakes hands in ST_HANDSHAKE:
# SSL_do_handshake is called on each event of its socket, edge-triggered like the rest
# (OpenSSL reads until EAGAIN before it says WANT_READ, so no edge is lost), and a
# handshake deadline on the timer wheel closes a client that says nothing. Then the
# target is picked and connected as for plain TCP; with `reencrypt` a second handshake,
# toward the target, comes after the connect (and after the PROXY header, which goes in
# clear). From there the bytes move with the copy path: the relay's channels read and
# write through tls_recv/tls_send instead of recv/send (chan_fill/chan_drain call them
# when the side has an SSL), never through a pipe.
#
# An SSL holds a reference to its SSL_CTX, so a reload that replaces the app's context
# leaves established connections with the certificate they shook hands with.


# What one connection's TLS needs beyond its sides' SSLs.
cdef struct fp_tls:
    fp_tls_ctx* ctx             # held: the SNI and ALPN callbacks read it
    bint target_phase           # ST_HANDSHAKE: with the target (reencrypt), not the client
    int read_err[2]             # an error seen after bytes were returned (client, target)
    bint counted                # the handshake result is counted


# -- moving bytes (chan_fill / chan_drain call these for a side with an SSL) -------

cdef inline int tls_side_index(fp_conn* c, fp_side* s) noexcept nogil:
    return 0 if s == &c.cli else 1


cdef ssize_t tls_recv(fp_side* s, char* buf, size_t room) noexcept nogil:
    """Plaintext from the side's TLS: >0 bytes, 0 the end (close_notify or FIN), -errno.
    Reads until `room` is full or the socket is empty, so a short count means what
    a short recv() means to chan_pump: nothing more until the next edge. (SSL_read
    returns one record at a time, and may hold the rest of one in its buffer.)"""
    cdef SSL* ssl = <SSL*>s.ssl
    cdef fp_tls* tl = s.conn.tls
    cdef int idx = tls_side_index(s.conn, s)
    cdef size_t got = 0
    cdef int n, err
    if tl.read_err[idx]:
        return tl.read_err[idx]
    while got < room:
        ERR_clear_error()
        n = SSL_read(ssl, buf + got, <int>min(room - got, <size_t>0x40000000))
        if n > 0:
            got += n
            continue
        err = SSL_get_error(ssl, n)
        if err == SSL_ERROR_WANT_READ or err == SSL_ERROR_WANT_WRITE:
            n = -EAGAIN
        elif err == SSL_ERROR_ZERO_RETURN:
            n = 0
        elif err == SSL_ERROR_SYSCALL and errno != 0:
            n = -errno
        elif err == SSL_ERROR_SYSCALL:
            n = 0               # EOF (SSL_OP_IGNORE_UNEXPECTED_EOF makes this rare)
        else:
            n = -EPROTO         # a bad record: the stream cannot go on
        if got == 0:
            return n
        if n != -EAGAIN:
            # Bytes came before the end or the error: they go first, and the next
            # call reports it (a reset socket reads as EOF once it was reported).
            tl.read_err[idx] = n if n < 0 else 0
            if n == 0:
                s.fin = True
        return <ssize_t>got
    return <ssize_t>got


cdef ssize_t tls_send(fp_side* s, const char* buf, size_t length) noexcept nogil:
    """Write plaintext through the side's TLS: >0 bytes taken, -errno. Writes until
    all is taken or the socket is full (SSL_MODE_ENABLE_PARTIAL_WRITE returns after
    each record), so a short count means the socket is full. A blocked record is
    retried from the same bytes, wherever they have moved to in the buffer
    (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)."""
    cdef SSL* ssl = <SSL*>s.ssl
    cdef size_t done = 0
    cdef int n, err
    while done < length:
        ERR_clear_error()
        n = SSL_write(ssl, buf + done, <int>min(length - done, <size_t>0x40000000))
        if n > 0:
            done += n
            continue
        err = SSL_get_error(ssl, n)
        if done > 0:
            break
        if err == SSL_ERROR_WANT_WRITE or err == SSL_ERROR_WANT_READ:
            return -EAGAIN
        if err == SSL_ERROR_SYSCALL and errno != 0:
            return -errno
        return -EPIPE
    return <ssize_t>done


cdef void tls_close_notify(fp_side* s) noexcept nogil:
    """What we send to a TLS side ends with a close_notify, before the TCP FIN."""
    if s.ssl != NULL:
        ERR_clear_error()
        SSL_shutdown(<SSL*>s.ssl)


cdef void side_shut_wr(fp_side* s, bint fin) noexcept nogil:
    """End what we send to this side: a TLS close_notify first where it has TLS,
    then the TCP FIN (unless the close that follows sends it)."""
    tls_close_notify(s)
    if fin:
        shutdown(s.fd, SHUT_WR)


# -- kernel TLS ------------------------------------------------------------------------
#
# Where the kernel has kTLS (/proc/net/tls_stat), OpenSSL installs the session's keys
# on the socket itself once the handshake is done (SSL_OP_ENABLE_KTLS: setsockopt
# TCP_ULP "tls", then SOL_TLS TLS_TX / TLS_RX with the keys). OpenSSL 3.0 does TX for
# TLS 1.2 and 1.3 and RX for 1.2 (AES-GCM, ChaCha20 where the kernel has them). For a
# direction the kernel took, the side goes back to plain recv/send, and its channel may
# use a pipe: splice works on a kTLS socket, encrypting (or decrypting) in the kernel.
# Where the kernel has none (no /proc/net/tls_stat: `modprobe tls` loads it), OpenSSL
# is not asked to try, and nothing changes: the copy path. UNTESTED where written: this machine's kernel has no kTLS;
# tests/test_tls_ktls.py runs where /proc/net/tls_stat exists.

cdef enum:
    KTLS_TX = 1
    KTLS_RX = 2


cdef void ktls_adopt(fp_conn* c, fp_side* s) noexcept nogil:
    """After a handshake: the directions of `s` the kernel took, if any."""
    cdef SSL* ssl = <SSL*>s.ssl
    cdef fp_chan* to_side = &c.down if s == &c.cli else &c.up
    cdef fp_chan* from_side = &c.up if s == &c.cli else &c.down
    if BIO_get_ktls_send(SSL_get_wbio(ssl)):
        s.ktls |= KTLS_TX
    # Reading past OpenSSL is right only with nothing of the stream left in it.
    if BIO_get_ktls_recv(SSL_get_rbio(ssl)) and not SSL_has_pending(ssl):
        s.ktls |= KTLS_RX
    # A channel may splice only when neither of its ends needs OpenSSL's hands.
    to_side.copy_only = (s.ktls & KTLS_TX) == 0 or tls_side_copies(c, s, True)
    from_side.copy_only = (s.ktls & KTLS_RX) == 0 or tls_side_copies(c, s, False)
    if s.ktls and s == &c.cli:
        fp_add_u64(&c.app_st.tls_ktls, 1)


cdef bint tls_side_copies(fp_conn* c, fp_side* s, bint toward) noexcept nogil:
    """Does the channel's other end still go through OpenSSL?"""
    cdef fp_side* other = &c.srv if s == &c.cli else &c.cli
    if other.ssl == NULL:
        return False
    return (other.ktls & (KTLS_RX if toward else KTLS_TX)) == 0


cdef inline ssize_t ktls_read_error(fp_side* s, int err) noexcept nogil:
    """recv/splice on a kTLS socket fails with EIO at a record that is not data (the
    peer's close_notify, an alert, a KeyUpdate): the end of what it sends, for us."""
    if err == EIO and s.ktls & KTLS_RX:
        return 0
    return -err


# -- handshakes --------------------------------------------------------------------

cdef SSL* tls_new_ssl(SSL_CTX* ctx, int fd) noexcept nogil:
    cdef SSL* ssl = SSL_new(ctx)
    if ssl == NULL:
        return NULL
    if SSL_set_fd(ssl, fd) != 1:
        SSL_free(ssl)
        return NULL
    return ssl


cdef bint tls_begin(fp_worker* w, fp_conn* c, fp_tls_ctx* t) noexcept nogil:
    """Give the connection its TLS state; False when out of memory (closed)."""
    c.tls = <fp_tls*>calloc(1, sizeof(fp_tls))
    if c.tls == NULL:
        conn_local_error(w, c)
        return False
    fp_incref(&t.refcnt)
    c.tls.ctx = t
    # Never a pipe: the bytes must pass through OpenSSL.
    c.up.copy_only = True
    c.down.copy_only = True
    return True


cdef bint tls_count_in_preface(fp_worker* w, fp_conn* c) noexcept nogil:
    """A client shaking hands holds a descriptor for nothing yet, as one sending its
    PROXY header: it counts against MaxConnectionsInPreface until its handshake is
    done (or closed, counted, when the app has as many)."""
    cdef fp_persource* ps = c.route.persource
    if fp_add_fetch_int(&ps.in_preface, 1) > ps.max_preface:
        fp_add_fetch_int(&ps.in_preface, -1)
        fp_add_u64(&c.app_st.rejected_preface, 1)
        c.result = R_REJECTED
        conn_close(w, c)
        return False
    fp_incref(&ps.refcnt)
    c.prefacing = ps
    return True


cdef void tls_accept_begin(fp_worker* w, fp_conn* c) noexcept nogil:
    """The client's app terminates TLS: shake hands before picking a target."""
    cdef fp_tls_ctx* t = c.route.tls
    cdef SSL* ssl
    if not tls_count_in_preface(w, c) or not tls_begin(w, c, t):
        return
    ssl = tls_new_ssl(t.certs[0], c.cli.fd)
    if ssl == NULL:
        conn_local_error(w, c)
        return
    SSL_set_accept_state(ssl)
    c.cli.ssl = ssl
    c.state = ST_HANDSHAKE
    c.deadline_ms = w.now_ms + t.handshake_timeout_ms
    timer_set(w, c, c.deadline_ms)
    tls_handshake(w, c)


cdef bint tls_connect_wanted(fp_conn* c) noexcept nogil:
    return c.tls != NULL and c.tls.ctx.client != NULL and c.srv.ssl == NULL


cdef void tls_connect_begin(fp_worker* w, fp_conn* c) noexcept nogil:
    """Connected to a target of a `reencrypt` app: shake hands with it, verifying its
    certificate against TargetCA and its name (TargetServerName, else its host)."""
    cdef fp_tls_ctx* t = c.tls.ctx
    cdef const char* name = NULL
    cdef SSL* ssl = tls_new_ssl(t.client, c.srv.fd)
    if ssl == NULL:
        conn_local_error(w, c)
        return
    if c.target_idx < t.ntargets:
        name = t.target_names[c.target_idx]
    if name == NULL:
        SSL_free(ssl)
        conn_local_error(w, c)
        return
    if X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) != 1:
        # A name, not an address: it goes in the SNI and must be the certificate's.
        if SSL_set1_host(ssl, name) != 1:
            SSL_free(ssl)
            conn_local_error(w, c)
            return
        SSL_set_tlsext_host_name(ssl, name)
    SSL_set_connect_state(ssl)
    c.srv.ssl = ssl
    c.tls.target_phase = True
    c.state = ST_HANDSHAKE
    c.deadline_ms = w.now_ms + t.handshake_timeout_ms
    timer_set(w, c, c.deadline_ms)
    tls_handshake(w, c)


cdef void tls_fail(fp_worker* w, fp_conn* c, int reason) noexcept nogil:
    """A handshake failed: counted by reason, the client reset (refused, not answered)."""
    cdef fp_stats* st = c.app_st
    if reason == R_TLS_TARGET:
        fp_add_u64(&st.tls_target_errors, 1)     # the client's own counted as ok
    elif c.tls != NULL and not c.tls.counted:
        c.tls.counted = True
        if reason == R_TLS_TIMEOUT:
            fp_add_u64(&st.tls_timeouts, 1)
        elif reason == R_TLS_CLOSED:
            fp_add_u64(&st.tls_closed, 1)
        else:
            fp_add_u64(&st.tls_errors, 1)
    c.result = reason
    if c.cli.fd >= 0:
        set_reset_on_close(c.cli.fd)
    conn_close(w, c)


cdef void tls_handshake(fp_worker* w, fp_conn* c) noexcept nogil:
    """Advance the handshake under way (the client's, or the target's); once done,
    go on: pick and connect a target, or start relaying."""
    cdef bint target = c.tls.target_phase
    cdef fp_side* s = &c.srv if target else &c.cli
    cdef SSL* ssl = <SSL*>s.ssl
    cdef int rc, err
    ERR_clear_error()
    rc = SSL_do_handshake(ssl)
    if rc == 1:
        timer_del(w, c)
        ktls_adopt(c, s)
        if target:
            c.tls.target_phase = False
            c.state = ST_RELAYING
            c.srv.readable = True   # the target may have sent already: no new edge
            conn_rearm(w, c)
            conn_relay_start(w, c)
            return
        c.tls.counted = True
        preface_release(c)
        fp_add_u64(&c.app_st.tls_handshakes, 1)
        if SSL_session_reused(ssl):
            fp_add_u64(&c.app_st.tls_resumed, 1)
        c.cli.readable = True       # what the client sent after its Finished waits
        conn_connect_first(w, c)
        return
    err = SSL_get_error(ssl, rc)
    if err == SSL_ERROR_WANT_READ or err == SSL_ERROR_WANT_WRITE:
        if s.hup and err == SSL_ERROR_WANT_READ and not s.readable:
            # It hung up before finishing, and all it sent is read.
            tls_fail(w, c, R_TLS_TARGET if target else R_TLS_CLOSED)
        return
    if target:
        tls_fail(w, c, R_TLS_TARGET)
    elif err == SSL_ERROR_SYSCALL or (err == SSL_ERROR_SSL and ERR_peek_last_error() == 0):
        tls_fail(w, c, R_TLS_CLOSED)    # gone (FIN or reset) before the end
    else:
        tls_fail(w, c, R_TLS_ERROR)


cdef void tls_event(fp_worker* w, fp_conn* c, fp_side* s, uint32_t events) noexcept nogil:
    """An event during a handshake. The other side's events are only remembered
    (side_event did), but a client gone while its target shakes hands ends it."""
    if (s == &c.srv) == c.tls.target_phase:
        if events & EV_READ:
            s.readable = False      # SSL_do_handshake reads to EAGAIN or to the end
        tls_handshake(w, c)
    elif s == &c.cli and events & EPOLLERR:
        conn_abort(w, c, &c.srv)


cdef void tls_timeout(fp_worker* w, fp_conn* c) noexcept nogil:
    tls_fail(w, c, R_TLS_TARGET if c.tls.target_phase else R_TLS_TIMEOUT)


cdef void tls_release(fp_conn* c) noexcept nogil:
    """What conn_close owes TLS (the sockets are closed by it; an SSL does not own
    its descriptor)."""
    if c.cli.ssl != NULL:
        SSL_free(<SSL*>c.cli.ssl)
        c.cli.ssl = NULL
    if c.srv.ssl != NULL:
        SSL_free(<SSL*>c.srv.ssl)
        c.srv.ssl = NULL
    if c.tls != NULL:
        tls_ctx_decref(c.tls.ctx)
        free(c.tls)
        c.tls = NULL


# -- what the access log and the PROXY header say of it ---------------------------

cdef void tls_alog(fp_alog_rec* rec, fp_conn* c) noexcept nogil:
    cdef SSL* ssl = <SSL*>c.cli.ssl
    cdef const char* name
    cdef const SSL_CIPHER* cipher
    if ssl == NULL:
        return
    rec.tls_version = SSL_version(ssl) if SSL_is_init_finished(ssl) else -1
    cipher = SSL_get_current_cipher(ssl) if rec.tls_version > 0 else NULL
    rec.tls_cipher = SSL_CIPHER_get_name(cipher) if cipher != NULL else NULL
    name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)
    rec.tls_sni[0] = 0
    if name != NULL:
        strncpy(rec.tls_sni, name, sizeof(rec.tls_sni) - 1)
        rec.tls_sni[sizeof(rec.tls_sni) - 1] = 0


cdef enum:
    PP2_TYPE_ALPN = 0x01
    PP2_TYPE_AUTHORITY = 0x02
    PP2_TYPE_SSL = 0x20
    PP2_SUBTYPE_SSL_VERSION = 0x21
    PP2_SUBTYPE_SSL_CIPHER = 0x23
    PP2_CLIENT_SSL = 0x01


cdef size_t pp2_tlv(unsigned char* at, int kind, const void* value, size_t n) noexcept nogil:
    at[0] = kind
    at[1] = <unsigned char>(n >> 8)
    at[2] = <unsigned char>(n & 0xff)
    memcpy(at + 3, value, n)
    return 3 + n


cdef size_t tls_proxy_tlvs(fp_conn* c, unsigned char* b, size_t n, size_t cap) noexcept nogil:
    """PROXY v2 TLVs after the addresses (at n): the client's SNI (AUTHORITY), its ALPN
    and PP2_TYPE_SSL (client spoke TLS, its certificate verified or none asked for,
    with version and cipher), as HAProxy sends them. Returns the new length; cap
    bounds it (the header buffer holds the longest: 255-byte name and protocol)."""
    cdef SSL* ssl = <SSL*>c.cli.ssl
    cdef const char* name
    cdef const unsigned char* alpn = NULL
    cdef unsigned int alpn_len = 0
    cdef const char* version
    cdef const char* cipher = NULL
    cdef const SSL_CIPHER* sc
    cdef size_t start, vlen, clen
    cdef uint32_t verify = 0
    if ssl == NULL:
        return n
    name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)
    if name != NULL and n + 3 + strlen(name) <= cap:
        n += pp2_tlv(b + n, PP2_TYPE_AUTHORITY, name, strlen(name))
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_len)
    if alpn_len > 0 and n + 3 + alpn_len <= cap:
        n += pp2_tlv(b + n, PP2_TYPE_ALPN, alpn, alpn_len)
    version = SSL_get_version(ssl)
    sc = SSL_get_current_cipher(ssl)
    if sc != NULL:
        cipher = SSL_CIPHER_get_name(sc)
    vlen = strlen(version)
    clen = strlen(cipher) if cipher != NULL else 0
    if n + 3 + 5 + 3 + vlen + 3 + clen > cap:
        return n
    start = n
    b[n] = PP2_TYPE_SSL
    n += 3
    b[n] = PP2_CLIENT_SSL
    memcpy(b + n + 1, &verify, 4)         # 0: verified (or no certificate asked for)
    n += 5
    n += pp2_tlv(b + n, PP2_SUBTYPE_SSL_VERSION, version, vlen)
    if clen:
        n += pp2_tlv(b + n, PP2_SUBTYPE_SSL_CIPHER, cipher, clen)
    b[start + 1] = <unsigned char>((n - start - 3) >> 8)
    b[start + 2] = <unsigned char>((n - start - 3) & 0xff)
    return n
