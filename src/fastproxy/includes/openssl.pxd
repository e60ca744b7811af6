# OpenSSL (Debian's libssl 3), as the relay's TLS part uses it (relay/tls.pxi); all
# callable without the GIL. Some of these are macros over SSL_CTX_ctrl: declared as
# functions, Cython emits the call as written and the macro expands it.
from libc.stdint cimport uint8_t


cdef extern from "<openssl/ssl.h>" nogil:
    ctypedef struct SSL_CTX:
        pass
    ctypedef struct SSL:
        pass
    ctypedef struct SSL_METHOD:
        pass
    ctypedef struct SSL_CIPHER:
        pass
    ctypedef struct SSL_SESSION:
        pass
    ctypedef struct X509:
        pass
    ctypedef struct X509_NAME:
        pass
    ctypedef struct X509_STORE_CTX:
        pass
    ctypedef struct ASN1_TIME:
        pass
    ctypedef struct EVP_CIPHER_CTX:
        pass
    ctypedef struct EVP_MAC_CTX:
        pass
    ctypedef struct EVP_CIPHER:
        pass
    cdef struct stack_st_X509_NAME:
        pass

    const SSL_METHOD* TLS_server_method()
    const SSL_METHOD* TLS_client_method()
    SSL_CTX* SSL_CTX_new(const SSL_METHOD* method)
    void SSL_CTX_free(SSL_CTX* ctx)
    int SSL_CTX_up_ref(SSL_CTX* ctx)
    int SSL_CTX_use_certificate_chain_file(SSL_CTX* ctx, const char* file)
    int SSL_CTX_use_PrivateKey_file(SSL_CTX* ctx, const char* file, int type)
    int SSL_CTX_check_private_key(const SSL_CTX* ctx)
    X509* SSL_CTX_get0_certificate(const SSL_CTX* ctx)
    long SSL_CTX_set_min_proto_version(SSL_CTX* ctx, int version)
    unsigned long SSL_CTX_set_options(SSL_CTX* ctx, unsigned long options)
    long SSL_CTX_set_mode(SSL_CTX* ctx, long mode)
    long SSL_CTX_set_session_cache_mode(SSL_CTX* ctx, long mode)
    int SSL_CTX_set_num_tickets(SSL_CTX* ctx, size_t n)
    int SSL_CTX_set_session_id_context(SSL_CTX* ctx, const unsigned char* sid, unsigned int n)
    long SSL_CTX_set_tlsext_servername_callback(SSL_CTX* ctx, int (*cb)(SSL*, int*, void*))
    long SSL_CTX_set_tlsext_servername_arg(SSL_CTX* ctx, void* arg)
    void SSL_CTX_set_alpn_select_cb(
        SSL_CTX* ctx,
        int (*cb)(SSL*, const unsigned char**, unsigned char*, const unsigned char*,
                  unsigned int, void*),
        void* arg)
    int SSL_select_next_proto(unsigned char** out, unsigned char* outlen,
                              const unsigned char* server, unsigned int server_len,
                              const unsigned char* client, unsigned int client_len)
    int SSL_CTX_load_verify_locations(SSL_CTX* ctx, const char* cafile, const char* capath)
    void SSL_CTX_set_verify(SSL_CTX* ctx, int mode, void* callback)
    stack_st_X509_NAME* SSL_load_client_CA_file(const char* file)
    void SSL_CTX_set_client_CA_list(SSL_CTX* ctx, stack_st_X509_NAME* names)
    long SSL_CTX_set_tlsext_ticket_key_evp_cb(
        SSL_CTX* ctx,
        int (*cb)(SSL*, unsigned char*, unsigned char*, EVP_CIPHER_CTX*, EVP_MAC_CTX*, int))
    SSL_CTX* SSL_set_SSL_CTX(SSL* ssl, SSL_CTX* ctx)
    SSL_CTX* SSL_get_SSL_CTX(const SSL* ssl)

    SSL* SSL_new(SSL_CTX* ctx)
    void SSL_free(SSL* ssl)
    int SSL_set_fd(SSL* ssl, int fd)
    void SSL_set_accept_state(SSL* ssl)
    void SSL_set_connect_state(SSL* ssl)
    int SSL_do_handshake(SSL* ssl)
    int SSL_read(SSL* ssl, void* buf, int num)
    int SSL_write(SSL* ssl, const void* buf, int num)
    int SSL_shutdown(SSL* ssl)
    int SSL_pending(const SSL* ssl)
    int SSL_get_error(const SSL* ssl, int ret)
    const char* SSL_get_servername(const SSL* ssl, int type)
    const char* SSL_get_version(const SSL* ssl)
    const SSL_CIPHER* SSL_get_current_cipher(const SSL* ssl)
    const char* SSL_CIPHER_get_name(const SSL_CIPHER* cipher)
    void SSL_get0_alpn_selected(const SSL* ssl, const unsigned char** data, unsigned int* n)
    int SSL_session_reused(const SSL* ssl)
    int SSL_version(const SSL* ssl)
    int SSL_is_init_finished(const SSL* ssl)
    long SSL_set_tlsext_host_name(SSL* ssl, const char* name)
    int SSL_set1_host(SSL* ssl, const char* hostname)
    void SSL_set_verify(SSL* ssl, int mode, void* callback)
    long SSL_get_verify_result(const SSL* ssl)
    int SSL_set_alpn_protos(SSL* ssl, const unsigned char* protos, unsigned int n)
    void SSL_set_app_data(SSL* ssl, void* arg)
    void* SSL_get_app_data(const SSL* ssl)
    ctypedef struct BIO:
        pass
    BIO* SSL_get_wbio(const SSL* ssl)
    BIO* SSL_get_rbio(const SSL* ssl)
    int SSL_has_pending(const SSL* ssl)


cdef extern from "<openssl/bio.h>" nogil:
    # Macros over BIO_ctrl; (0) when OpenSSL is built without kTLS
    bint BIO_get_ktls_send(BIO* b)
    bint BIO_get_ktls_recv(BIO* b)

    enum:
        SSL_FILETYPE_PEM
        TLS1_2_VERSION
        TLS1_3_VERSION
        SSL_OP_NO_COMPRESSION
        SSL_OP_NO_RENEGOTIATION
        SSL_OP_IGNORE_UNEXPECTED_EOF
        SSL_OP_CIPHER_SERVER_PREFERENCE
        SSL_OP_ENABLE_KTLS
        SSL_MODE_ENABLE_PARTIAL_WRITE
        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
        SSL_MODE_RELEASE_BUFFERS
        SSL_SESS_CACHE_OFF
        SSL_SESS_CACHE_SERVER
        SSL_VERIFY_NONE
        SSL_VERIFY_PEER
        SSL_VERIFY_FAIL_IF_NO_PEER_CERT
        SSL_ERROR_NONE
        SSL_ERROR_SSL
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_SYSCALL
        SSL_ERROR_ZERO_RETURN
        SSL_TLSEXT_ERR_OK
        SSL_TLSEXT_ERR_NOACK
        SSL_TLSEXT_ERR_ALERT_FATAL
        TLSEXT_NAMETYPE_host_name
        OPENSSL_NPN_NEGOTIATED
        X509_V_OK


cdef extern from "<openssl/x509.h>" nogil:
    const ASN1_TIME* X509_get0_notAfter(const X509* x)
    int ASN1_TIME_diff(int* pday, int* psec, const ASN1_TIME* frm, const ASN1_TIME* to)
    X509* d2i_X509(X509** px, const unsigned char** data, long n)
    const char* X509_verify_cert_error_string(long n)


cdef extern from "<openssl/x509v3.h>" nogil:
    int X509_check_host(X509* x, const char* name, size_t n, unsigned int flags, char** peer)


cdef extern from "<openssl/err.h>" nogil:
    unsigned long ERR_get_error()
    unsigned long ERR_peek_last_error()
    void ERR_clear_error()
    void ERR_error_string_n(unsigned long e, char* buf, size_t n)
    const char* ERR_reason_error_string(unsigned long e)


cdef extern from "<openssl/evp.h>" nogil:
    const EVP_CIPHER* EVP_aes_256_cbc()
    int EVP_EncryptInit_ex(EVP_CIPHER_CTX* ctx, const EVP_CIPHER* cipher, void* engine,
                           const unsigned char* key, const unsigned char* iv)
    int EVP_DecryptInit_ex(EVP_CIPHER_CTX* ctx, const EVP_CIPHER* cipher, void* engine,
                           const unsigned char* key, const unsigned char* iv)


cdef extern from "<openssl/core.h>" nogil:
    ctypedef struct OSSL_PARAM:
        pass


cdef extern from "<openssl/params.h>" nogil:
    OSSL_PARAM OSSL_PARAM_construct_octet_string(const char* key, void* buf, size_t n)
    OSSL_PARAM OSSL_PARAM_construct_utf8_string(const char* key, char* buf, size_t n)
    OSSL_PARAM OSSL_PARAM_construct_end()


cdef extern from "<openssl/rand.h>" nogil:
    int RAND_bytes(unsigned char* buf, int n)


cdef extern from "<openssl/evp.h>" nogil:
    int EVP_MAC_CTX_set_params(EVP_MAC_CTX* ctx, const OSSL_PARAM* params)


cdef extern from "<openssl/x509.h>" nogil:
    X509_NAME* X509_get_subject_name(const X509* x)
    int X509_NAME_get_text_by_NID(X509_NAME* name, int nid, char* buf, int n)


cdef extern from "<openssl/obj_mac.h>" nogil:
    enum:
        NID_commonName


cdef extern from "<openssl/x509_vfy.h>" nogil:
    ctypedef struct X509_VERIFY_PARAM:
        pass
    int X509_VERIFY_PARAM_set1_ip_asc(X509_VERIFY_PARAM* param, const char* ip)


cdef extern from "<openssl/ssl.h>" nogil:
    X509_VERIFY_PARAM* SSL_get0_param(SSL* ssl)
