# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# The relay's TLS contexts and handshake callbacks (relay/tlsctx.pxi: certificate by SNI,
# ALPN, session tickets from the key ring), compiled from the very .pxi files the relay
# includes, behind C entry points for the libFuzzer harness (tls_hello.c), which feeds
# a server handshake untrusted bytes. Nothing here touches Python: never initialised.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memmove, memset, strlen, strncpy

from fastproxy.includes.system cimport *
from fastproxy.includes.openssl cimport *

include "../src/fastproxy/relay/structs.pxi"
include "../src/fastproxy/relay/tlsctx.pxi"


cdef fp_tls_ctx* FUZZ_CTX = NULL


cdef public SSL_CTX* fuzz_tls_setup(const char* cert_a, const char* key_a,
                                    const char* cert_b, const char* key_b) noexcept nogil:
    """Two certificates (SNI picks between them) and ALPN h2, http/1.1, as TlsContext
    makes them; the ticket ring with two keys. NULL if a file does not load."""
    cdef const char** files = [cert_a, key_a, cert_b, key_b]
    cdef const unsigned char* alpn = <const unsigned char*>b"\x02h2\x08http/1.1"
    cdef fp_tls_ctx* t = <fp_tls_ctx*>calloc(1, sizeof(fp_tls_ctx))
    cdef int i
    cdef fp_ticket_key key
    if t == NULL:
        return NULL
    t.refcnt = 1
    t.alpn = <unsigned char*>malloc(12)     # exactly: ASan sees a read past it
    memcpy(t.alpn, alpn, 12)
    t.alpn_len = 12
    t.certs = <SSL_CTX**>calloc(2, sizeof(SSL_CTX*))
    t.leafs = <X509**>calloc(2, sizeof(X509*))
    for i in range(2):
        t.certs[i] = tls_server_ctx(t, TLS1_2_VERSION, False)
        t.ncerts = i + 1
        if t.certs[i] == NULL:
            return NULL
        if SSL_CTX_use_certificate_chain_file(t.certs[i], files[2 * i]) != 1 \
                or SSL_CTX_use_PrivateKey_file(t.certs[i], files[2 * i + 1],
                                               SSL_FILETYPE_PEM) != 1:
            return NULL
        t.leafs[i] = SSL_CTX_get0_certificate(t.certs[i])
    pthread_mutex_init(&TICKET_RING.lock, NULL)
    for i in range(2):
        RAND_bytes(<unsigned char*>&key, sizeof(fp_ticket_key))
        TICKET_RING.keys[1] = TICKET_RING.keys[0]
        TICKET_RING.keys[0] = key
    TICKET_RING.count = 2
    FUZZ_CTX = t
    return t.certs[0]
