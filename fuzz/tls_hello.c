/* libFuzzer entry point for a TLS server handshake fed untrusted bytes, built with
 * AddressSanitizer: the relay's own contexts and callbacks (relay/tlsctx.pxi via
 * tls.pyx: certificate by SNI, ALPN, ticket keys) run on whatever the input makes
 * OpenSSL hand them. The first byte sets the size of the pieces the rest arrives in
 * (1 to 16 bytes: segments, as a trickling client sends them); the handshake is
 * stepped after each piece, as the relay steps it on each readable edge. Besides
 * memory safety it checks that a handshake never completes without a client's
 * Finished (these inputs cannot hold one) and that a chosen ALPN is one of ours. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <libgen.h>
#include <stdio.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include "tls.h"

static SSL_CTX *server;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    char dir[4096], a_cert[4200], a_key[4200], b_cert[4200], b_key[4200];
    snprintf(dir, sizeof dir, "%s", (*argv)[0]);
    char *d = dirname(dir);
    snprintf(a_cert, sizeof a_cert, "%s/tls-a.pem", d);
    snprintf(a_key, sizeof a_key, "%s/tls-a.key", d);
    snprintf(b_cert, sizeof b_cert, "%s/tls-b.pem", d);
    snprintf(b_key, sizeof b_key, "%s/tls-b.key", d);
    server = fuzz_tls_setup(a_cert, a_key, b_cert, b_key);
    if (server == NULL) {
        fprintf(stderr, "fuzz-tls: cannot load %s and %s\n", a_cert, b_cert);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    size_t step = (data[0] % 16) + 1, off = 1;
    SSL *ssl = SSL_new(server);
    BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(in, -1); /* empty: "try again", as a socket's EAGAIN */
    SSL_set_bio(ssl, in, out);
    SSL_set_accept_state(ssl);
    while (off < size) {
        size_t n = size - off < step ? size - off : step;
        BIO_write(in, data + off, (int)n);
        off += n;
        ERR_clear_error();
        int rc = SSL_do_handshake(ssl);
        if (rc == 1)
            abort(); /* no input here can finish a handshake */
        int err = SSL_get_error(ssl, rc);
        (void)BIO_reset(out);
        if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE)
            break;
    }
    const unsigned char *alpn = NULL;
    unsigned int alpn_len = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    if (alpn_len && !(alpn_len == 2 && memcmp(alpn, "h2", 2) == 0) &&
        !(alpn_len == 8 && memcmp(alpn, "http/1.1", 8) == 0))
        abort(); /* a protocol we never offered */
    SSL_free(ssl);
    return 0;
}
