# TLS contexts (relay/tls.pxi has what a connection does with them): an app's
# fp_tls_ctx, one SSL_CTX per certificate and the client one for reencrypt, built by
# TlsContext in the Python thread; the OpenSSL callbacks the workers run during
# handshakes (certificate by SNI, ALPN, session tickets) and the process's ticket key
# ring. Kept apart from the connection code so that fuzz/tls.pyx can build the same
# contexts and callbacks under AddressSanitizer without the rest of the relay.

import os
import time

cdef struct fp_tls_ctx:
    int refcnt
    int ncerts
    SSL_CTX** certs             # server side, [0]: the default (no or unknown SNI)
    X509** leafs                # each context's certificate (owned by its SSL_CTX)
    SSL_CTX* client             # reencrypt: verifies targets against TargetCA, or NULL
    int ntargets
    char** target_names         # reencrypt: the name each target's certificate must have
    unsigned char* alpn         # protocols we accept, wire format (length-prefixed)
    unsigned int alpn_len
    int64_t handshake_timeout_ms


cdef void tls_ctx_free(fp_tls_ctx* t) noexcept nogil:
    cdef int i
    if t == NULL:
        return
    if t.certs != NULL:
        for i in range(t.ncerts):
            if t.certs[i] != NULL:
                SSL_CTX_free(t.certs[i])
    if t.target_names != NULL:
        for i in range(t.ntargets):
            free(t.target_names[i])
    if t.client != NULL:
        SSL_CTX_free(t.client)
    free(t.target_names)
    free(t.certs)
    free(t.leafs)
    free(t.alpn)
    free(t)


cdef inline void tls_ctx_decref(fp_tls_ctx* t) noexcept nogil:
    if t != NULL and fp_decref(&t.refcnt) == 0:
        tls_ctx_free(t)


# -- session tickets ---------------------------------------------------------------
#
# One ring of ticket keys for the whole process: every worker, every app and every
# context (a reload's too) seal tickets with the newest and open them with any key
# still in the ring, so a client resumes on whichever worker takes it, across
# reloads. Python rotates it (Relay.rotate_ticket_keys, on a schedule); a ticket
# sealed with an older key is opened and replaced by one with the newest.

cdef enum:
    TICKET_KEYS = 3             # the newest and the two before it


cdef struct fp_ticket_key:
    unsigned char name[16]
    unsigned char aes[32]
    unsigned char hmac[32]


cdef struct fp_ticket_ring:
    pthread_mutex_t lock        # held for a copy: a rotation never tears a key
    int count
    fp_ticket_key keys[TICKET_KEYS]     # [0]: the newest


cdef fp_ticket_ring TICKET_RING
pthread_mutex_init(&TICKET_RING.lock, NULL)


cdef int tls_ticket_key(SSL* ssl, unsigned char* name, unsigned char* iv,
                        EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac, int enc) noexcept nogil:
    """OpenSSL's ticket callback: seal (enc) with the newest key, or open with the key
    the ticket names: 1, 2 (open, but seal a new one), 0 (unknown: full handshake),
    -1 (error)."""
    cdef fp_ticket_key key
    cdef int i, found = -1
    cdef OSSL_PARAM params[3]
    pthread_mutex_lock(&TICKET_RING.lock)
    if enc:
        if TICKET_RING.count > 0:
            found = 0
    else:
        for i in range(TICKET_RING.count):
            if memcmp(name, TICKET_RING.keys[i].name, 16) == 0:
                found = i
                break
    if found >= 0:
        memcpy(&key, &TICKET_RING.keys[found], sizeof(fp_ticket_key))
    pthread_mutex_unlock(&TICKET_RING.lock)
    if found < 0:
        return -1 if enc else 0
    params[0] = OSSL_PARAM_construct_octet_string(b"key", key.hmac, 32)
    params[1] = OSSL_PARAM_construct_utf8_string(b"digest", b"SHA256", 0)
    params[2] = OSSL_PARAM_construct_end()
    if enc:
        memcpy(name, key.name, 16)
        if RAND_bytes(iv, 16) != 1:
            return -1
        if EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), NULL, key.aes, iv) != 1:
            return -1
    elif EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), NULL, key.aes, iv) != 1:
        return -1
    if EVP_MAC_CTX_set_params(mac, params) != 1:
        return -1
    # 2: seal a new ticket. OpenSSL sends one on a resumed TLS 1.3 connection only when
    # asked to, and TLS 1.3 clients use each ticket once: without it, every other
    # connection of theirs was a full handshake.
    if enc or (found == 0 and SSL_version(ssl) < TLS1_3_VERSION):
        return 1
    return 2


def rotate_ticket_keys():
    """A new newest ticket key; the oldest of TICKET_KEYS goes (its tickets no longer
    resume). Keys come from OpenSSL's CSPRNG and never leave the process."""
    cdef fp_ticket_key key
    cdef int i
    if RAND_bytes(<unsigned char*>&key, sizeof(fp_ticket_key)) != 1:
        raise OSError("no random bytes for a ticket key")
    with nogil:
        pthread_mutex_lock(&TICKET_RING.lock)
        i = TICKET_KEYS - 1
        while i > 0:
            TICKET_RING.keys[i] = TICKET_RING.keys[i - 1]
            i -= 1
        TICKET_RING.keys[0] = key
        TICKET_RING.count = min(TICKET_RING.count + 1, <int>TICKET_KEYS)
        pthread_mutex_unlock(&TICKET_RING.lock)
    memset(&key, 0, sizeof(key))


rotate_ticket_keys()


# -- OpenSSL callbacks (in the worker, during SSL_do_handshake) -------------------

cdef int tls_pick_cert(SSL* ssl, int* alert, void* arg) noexcept nogil:
    """SNI: the first certificate whose names match, else the default one."""
    cdef fp_tls_ctx* t = <fp_tls_ctx*>arg
    cdef const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)
    cdef int i
    if name == NULL:
        return SSL_TLSEXT_ERR_NOACK
    for i in range(t.ncerts):
        if X509_check_host(t.leafs[i], name, 0, 0, NULL) == 1:
            if i > 0:
                SSL_set_SSL_CTX(ssl, t.certs[i])
            return SSL_TLSEXT_ERR_OK
    return SSL_TLSEXT_ERR_OK        # the default certificate, as for no name


cdef int tls_pick_alpn(SSL* ssl, const unsigned char** out, unsigned char* outlen,
                       const unsigned char* offered, unsigned int offered_len,
                       void* arg) noexcept nogil:
    """ALPN: our first protocol the client offers; none in common: no ALPN."""
    cdef fp_tls_ctx* t = <fp_tls_ctx*>arg
    if SSL_select_next_proto(<unsigned char**>out, outlen, t.alpn, t.alpn_len,
                             offered, offered_len) == OPENSSL_NPN_NEGOTIATED:
        return SSL_TLSEXT_ERR_OK
    return SSL_TLSEXT_ERR_NOACK


# -- building contexts (Python thread, with the GIL) -------------------------------

TLS_VERSIONS = {"1.2": TLS1_2_VERSION, "1.3": TLS1_3_VERSION}
TLS_VERSION_NAMES = {TLS1_2_VERSION: "TLSv1.2", TLS1_3_VERSION: "TLSv1.3", -1: "none"}


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot serve. `field` names it in the app's
    Tls (e.g. "Certificates[1].Key"); str() is one line."""

    def __init__(self, field, reason):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


cdef str tls_error_text():
    """OpenSSL's reason for the last failure on this thread, one line."""
    cdef unsigned long e = ERR_peek_last_error()
    cdef const char* reason
    ERR_clear_error()
    if e == 0:
        return "unknown error"
    reason = ERR_reason_error_string(e)
    return reason.decode(errors="replace") if reason != NULL else f"error {e:#x}"


def _readable(path, field):
    """The file can be opened for reading: else the one-line why."""
    import io     # open() is open(2) here (includes/system.pxd)
    try:
        with io.open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError:
        raise TlsFileError(field, f"{path}: file not found") from None
    except PermissionError:
        raise TlsFileError(field, f"{path}: permission denied") from None
    except IsADirectoryError:
        raise TlsFileError(field, f"{path}: is a directory") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise TlsFileError(field, f"{path}: cannot read the file: {reason}") from None


cdef SSL_CTX* tls_server_ctx(fp_tls_ctx* t, int min_version, bint ktls) noexcept nogil:
    """A server context with the relay's settings and callbacks; NULL: out of memory."""
    cdef SSL_CTX* ctx = SSL_CTX_new(TLS_server_method())
    if ctx == NULL:
        return NULL
    SSL_CTX_set_min_proto_version(ctx, min_version)
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION
                        | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_CIPHER_SERVER_PREFERENCE)
    if ktls:
        SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS)
    # Partial writes: tls_send moves what the socket takes; released buffers: an
    # idle connection holds no 2 x 16 KB of OpenSSL's.
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                     | SSL_MODE_RELEASE_BUFFERS)
    # Resumption by tickets only: no server-side cache, whose lock the workers
    # would share.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF)
    SSL_CTX_set_session_id_context(ctx, <const unsigned char*>b"fastproxy", 9)
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, tls_ticket_key)
    SSL_CTX_set_tlsext_servername_callback(ctx, tls_pick_cert)
    SSL_CTX_set_tlsext_servername_arg(ctx, t)
    if t.alpn_len:
        SSL_CTX_set_alpn_select_cb(ctx, tls_pick_alpn, t)
    return ctx


cdef class TlsContext:
    """An app's TLS, loaded from its files: what the relay serves with, and what
    `check` and a reload try before anything changes. Raises TlsFileError."""

    cdef fp_tls_ctx* t
    cdef readonly list certificates     # [(name, not after as Unix time)]
    cdef readonly bint reencrypt
    cdef readonly bint ktls             # OpenSSL may hand records to the kernel

    def __cinit__(self, list certificates, *, str min_version="1.2", alpn=(),
                  client_ca=None, target_ca=None, target_names=None,
                  double handshake_timeout=5.0, bint ktls=False):
        cdef int i, day = 0, sec = 0
        cdef SSL_CTX* ctx
        cdef X509* leaf
        cdef stack_st_X509_NAME* names
        cdef char cn[256]
        cdef int version = TLS_VERSIONS[min_version]
        self.certificates = []
        # Only where the kernel has kTLS loaded (the caller looks): elsewhere each
        # handshake would try TCP_ULP "tls" in vain, and may have the kernel run
        # modprobe for it.
        self.ktls = ktls
        self.t = <fp_tls_ctx*>calloc(1, sizeof(fp_tls_ctx))
        if self.t == NULL:
            raise MemoryError()
        self.t.refcnt = 1
        self.t.handshake_timeout_ms = <int64_t>(handshake_timeout * 1000)
        wire = b"".join(bytes([len(p)]) + p.encode() for p in alpn)
        if wire:
            self.t.alpn = <unsigned char*>malloc(len(wire))
            if self.t.alpn == NULL:
                raise MemoryError()
            memcpy(self.t.alpn, <const char*>wire, len(wire))
            self.t.alpn_len = len(wire)
        n = len(certificates)
        if n == 0:
            raise TlsFileError("Certificates", "no certificate")
        self.t.certs = <SSL_CTX**>calloc(n, sizeof(SSL_CTX*))
        self.t.leafs = <X509**>calloc(n, sizeof(X509*))
        if self.t.certs == NULL or self.t.leafs == NULL:
            raise MemoryError()
        now = time.time()
        for i, (cert, key) in enumerate(certificates):
            field = f"Certificates[{i}]"
            _readable(cert, field + ".Cert")
            _readable(key, field + ".Key")
            ctx = tls_server_ctx(self.t, version, ktls)
            if ctx == NULL:
                raise MemoryError()
            self.t.certs[i] = ctx
            self.t.ncerts = i + 1
            ERR_clear_error()
            if SSL_CTX_use_certificate_chain_file(ctx, os.fsencode(cert)) != 1:
                raise TlsFileError(field + ".Cert",
                                   f"{cert}: not a PEM certificate ({tls_error_text()})")
            if SSL_CTX_use_PrivateKey_file(ctx, os.fsencode(key), SSL_FILETYPE_PEM) != 1:
                why = tls_error_text()
                if "values mismatch" in why or "mismatch" in why:
                    raise TlsFileError(field + ".Key",
                                       f"{key}: the key does not match the certificate {cert}")
                raise TlsFileError(field + ".Key", f"{key}: not a PEM private key ({why})")
            if SSL_CTX_check_private_key(ctx) != 1:
                ERR_clear_error()
                raise TlsFileError(field + ".Key",
                                   f"{key}: the key does not match the certificate {cert}")
            leaf = SSL_CTX_get0_certificate(ctx)
            self.t.leafs[i] = leaf
            if ASN1_TIME_diff(&day, &sec, NULL, X509_get0_notAfter(leaf)) != 1:
                raise TlsFileError(field + ".Cert", f"{cert}: unreadable expiry date")
            not_after = now + day * 86400 + sec
            if not_after <= now:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(not_after))
                raise TlsFileError(field + ".Cert", f"{cert}: the certificate expired on {when}")
            if X509_NAME_get_text_by_NID(X509_get_subject_name(leaf), NID_commonName,
                                         cn, sizeof(cn)) < 0:
                name = os.path.basename(cert)
            else:
                name = cn.decode(errors="replace")
            self.certificates.append((name, not_after))
        if client_ca is not None:
            _readable(client_ca, "ClientCA")
            names = SSL_load_client_CA_file(os.fsencode(client_ca))
            if names == NULL:
                raise TlsFileError("ClientCA", f"{client_ca}: no PEM certificate in it"
                                   f" ({tls_error_text()})")
            for i in range(self.t.ncerts):
                if SSL_CTX_load_verify_locations(self.t.certs[i], os.fsencode(client_ca),
                                                 NULL) != 1:
                    raise TlsFileError("ClientCA", f"{client_ca}: {tls_error_text()}")
                SSL_CTX_set_verify(self.t.certs[i],
                                   SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL)
                # The list is the context's once set: a copy for each other one.
                SSL_CTX_set_client_CA_list(
                    self.t.certs[i],
                    names if i == 0 else SSL_load_client_CA_file(os.fsencode(client_ca)))
        self.reencrypt = target_names is not None
        if self.reencrypt:
            self._client(target_ca, target_names)

    cdef _client(self, target_ca, list target_names):
        cdef int i
        cdef SSL_CTX* ctx = SSL_CTX_new(TLS_client_method())
        if ctx == NULL:
            raise MemoryError()
        self.t.client = ctx
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)
        SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION
                            | SSL_OP_IGNORE_UNEXPECTED_EOF)
        if self.ktls:
            SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS)
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                         | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS)
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL)
        if target_ca is None:
            raise TlsFileError("TargetCA", "required with Mode reencrypt")
        _readable(target_ca, "TargetCA")
        ERR_clear_error()
        if SSL_CTX_load_verify_locations(ctx, os.fsencode(target_ca), NULL) != 1:
            raise TlsFileError("TargetCA", f"{target_ca}: no PEM certificate in it"
                               f" ({tls_error_text()})")
        self.t.target_names = <char**>calloc(max(1, len(target_names)), sizeof(char*))
        if self.t.target_names == NULL:
            raise MemoryError()
        for i, name in enumerate(target_names):
            raw = name.encode()
            self.t.target_names[i] = <char*>malloc(len(raw) + 1)
            if self.t.target_names[i] == NULL:
                raise MemoryError()
            memcpy(self.t.target_names[i], <const char*>raw, len(raw) + 1)
            self.t.ntargets = i + 1

    def __dealloc__(self):
        tls_ctx_decref(self.t)
        self.t = NULL

    cdef fp_tls_ctx* share(self):
        """A reference for a route to hold."""
        fp_incref(&self.t.refcnt)
        return self.t
