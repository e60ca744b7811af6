/* TLS load, closed loop: CONNECTIONS at once, each starting again as soon as it is done.
 *
 *   tlsload MODE HOST PORT CONNECTIONS SECONDS [WARMUP [PATH]]
 *
 * MODE full      every connection a full handshake (no session offered);
 * MODE resumed   every connection offers the session its slot got from the ticket of
 *                the slot's previous connection (TLS 1.3: a ticket used once, as
 *                browsers do); the slot's first connection is a full one: the counted
 *                window starts once every slot holds a ticket (and WARMUP is over);
 * MODE bulk      CONNECTIONS keep-alive connections, each GETting PATH (HTTP/1.1, answers
 *                parsed by Content-Length) again and again: the bytes read per second.
 *
 * A handshake connection: connect, handshake, close_notify and FIN, then read until the
 * server closes (the tickets it sends after the handshake are read on the way, so the
 * server's handshake ended whole: it is never cut short by the client's reset). Only the
 * handshake is timed (connect() to the end of SSL_connect: p50/p99 in µs). The first
 * WARMUP seconds (default 0) are not counted, then SECONDS are: handshakes that end in
 * that window, how many resumed a session (SSL_session_reused: the server accepted the
 * ticket), errors (refused, failed or cut handshakes).
 *
 * The client does not verify the certificate chain (it is the load, not the test of
 * the certificates; the harness checks once what each contender serves): it only does
 * the handshake's own work, which TLS requires (key exchange, the server's signature).
 * OpenSSL's defaults otherwise (versions, ciphers, groups), as an ordinary client.
 *
 * Prints one JSON line: counts and rates of the counted window, latency percentiles,
 * handshakes_total and bytes_total (the warm-up's too: what a server's CPU read around
 * the whole run was spent on), what the first counted handshake (or the first) negotiated (version,
 * cipher, group, the server key's type and bits), and
 * client_cpu_share: this program's CPU time over the counted window (near 1, the load
 * generator itself is the bottleneck). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { FULL, RESUMED, BULK };
enum { HANDSHAKE, DRAIN, SEND, HEADERS, BODY };

typedef struct {
    int fd, state, id;
    SSL *ssl;
    SSL_SESSION *session;  /* resumed: the newest ticket this slot was given */
    uint64_t started;      /* connect() of the current connection */
    char head[8192];       /* bulk: an answer's header while it comes in */
    size_t hlen;
    uint64_t body_left;
} slot_t;

static int mode, ep;
static SSL_CTX *ctx;
static struct sockaddr_in addr;
static const char *host;
static char request[512];
static int reqlen;
static uint64_t counted_from, stop;
static uint64_t handshakes, resumed, errors, tickets, bytes, answers;
/* the warm-up's too: what the server's CPU, read around the whole run, was spent on */
static uint64_t handshakes_total, bytes_total;
static int primed; /* resumed: slots holding a ticket (counting waits for all of them) */
static uint32_t *lat;
static size_t lat_cap;
static char negotiated[512];

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "tlsload: %s: %s\n", what, strerror(errno));
    ERR_print_errors_fp(stderr);
    exit(2);
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int counting(uint64_t t) { return counted_from && t >= counted_from && t < stop; }

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* No chain verification: see the top of this file. */
static int accept_chain(X509_STORE_CTX *store, void *arg) {
    (void)store;
    (void)arg;
    return 1;
}

/* A ticket arrived: resumed mode keeps it for the slot's next connection. Copies
 * only, one per use too (start()): a session that was a connection's own is marked not
 * resumable by SSL_free() (seen with OpenSSL 3.0 after a close_notify from the server:
 * every ticket from nginx went unused), so the kept one is never set on a connection. */
static int new_session(SSL *ssl, SSL_SESSION *session) {
    slot_t *s = SSL_get_app_data(ssl);
    if (counting(now_ns())) tickets++;
    if (mode != RESUMED) return 0;
    SSL_SESSION *copy = SSL_SESSION_dup(session);
    if (!copy) die("SSL_SESSION_dup");
    if (s->session) SSL_SESSION_free(s->session);
    else primed++;
    s->session = copy;
    return 0; /* OpenSSL keeps (and frees) its own */
}

static void describe(SSL *ssl) {
    const char *group = "none";
    int nid = SSL_get_negotiated_group(ssl);
    if (nid > 0 && OBJ_nid2sn(nid)) group = OBJ_nid2sn(nid);
    X509 *cert = SSL_get0_peer_certificate(ssl);
    EVP_PKEY *key = cert ? X509_get0_pubkey(cert) : NULL;
    const char *kind = !key ? "none" : EVP_PKEY_get_base_id(key) == EVP_PKEY_EC ? "EC"
                                     : EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA ? "RSA" : "other";
    snprintf(negotiated, sizeof negotiated,
             "\"version\": \"%s\", \"cipher\": \"%s\", \"group\": \"%s\", \"key\": \"%s-%d\"",
             SSL_get_version(ssl), SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)), group, kind,
             key ? EVP_PKEY_get_bits(key) : 0);
}

static void start(slot_t *s);

static void finish(slot_t *s, int failed) {
    if (failed && counting(now_ns())) errors++;
    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
    SSL_free(s->ssl);
    close(s->fd);
    s->ssl = NULL;
    s->fd = -1;
    start(s);
}

static void start(slot_t *s) {
    s->started = now_ns();
    if (s->started >= stop) return; /* the run is over: no new connection */
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s->fd < 0) die("socket");
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(s->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        /* refused: counted, and tried again on the next turn of the loop */
        if (counting(now_ns())) errors++;
        close(s->fd);
        s->fd = -1;
        return;
    }
    s->ssl = SSL_new(ctx);
    if (!s->ssl) die("SSL_new");
    SSL_set_fd(s->ssl, s->fd);
    SSL_set_connect_state(s->ssl);
    SSL_set_app_data(s->ssl, s);
    SSL_set_tlsext_host_name(s->ssl, host);
    if (mode == RESUMED && s->session) {
        SSL_SESSION *copy = SSL_SESSION_dup(s->session);
        if (!copy || !SSL_set_session(s->ssl, copy)) die("SSL_set_session");
        SSL_SESSION_free(copy); /* the connection holds it now */
    }
    s->state = HANDSHAKE;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u32 = (uint32_t)s->id};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) < 0) die("epoll_ctl");
}

/* 1 to go on, 0 to wait for the socket; on an error the slot starts over. */
static int want(slot_t *s, int r) {
    int e = SSL_get_error(s->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
    ERR_clear_error();
    finish(s, 1);
    return 0;
}

static void send_request(slot_t *s) {
    int r = SSL_write(s->ssl, request, reqlen);
    if (r == reqlen) {
        s->state = HEADERS;
        s->hlen = 0;
    } else {
        want(s, r); /* a 100-byte write that does not fit: retried when writable */
    }
}

static void step(slot_t *s) {
    static char buf[1 << 16];
    for (;;) {
        if (s->fd < 0) return;
        if (s->state == HANDSHAKE) {
            int r = SSL_do_handshake(s->ssl);
            if (r != 1) {
                want(s, r);
                return;
            }
            uint64_t t = now_ns();
            handshakes_total++;
            if (!negotiated[0]) describe(s->ssl); /* bulk: its handshakes are in the warm-up */
            if (counting(t)) {
                if (!handshakes) describe(s->ssl);
                handshakes++;
                resumed += SSL_session_reused(s->ssl) ? 1 : 0;
                if (handshakes > lat_cap) {
                    lat_cap *= 2;
                    lat = realloc(lat, lat_cap * sizeof *lat);
                    if (!lat) die("realloc");
                }
                lat[handshakes - 1] = (uint32_t)((t - s->started) / 1000u);
            }
            if (mode == BULK) {
                s->state = SEND;
            } else {
                SSL_shutdown(s->ssl); /* close_notify, then FIN: the server closes */
                shutdown(s->fd, SHUT_WR);
                s->state = DRAIN;
            }
        } else if (s->state == DRAIN) {
            int r = SSL_read(s->ssl, buf, sizeof buf);
            if (r > 0) continue;
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
            ERR_clear_error();
            finish(s, 0); /* the server's close (close_notify, FIN or a reset): done */
            return;
        } else if (s->state == SEND) {
            send_request(s);
            if (s->state == SEND) return;
        } else if (s->state == HEADERS) {
            int r = SSL_read(s->ssl, s->head + s->hlen, (int)(sizeof s->head - 1 - s->hlen));
            if (r <= 0) {
                want(s, r);
                return;
            }
            if (counting(now_ns())) bytes += (uint64_t)r;
            bytes_total += (uint64_t)r;
            s->hlen += (size_t)r;
            s->head[s->hlen] = 0;
            char *end = strstr(s->head, "\r\n\r\n");
            if (!end) {
                if (s->hlen >= sizeof s->head - 1) finish(s, 1);
                continue;
            }
            char *cl = strcasestr(s->head, "Content-Length:");
            if (!cl || strncmp(s->head, "HTTP/1.1 200", 12) != 0) {
                finish(s, 1);
                return;
            }
            uint64_t body = strtoull(cl + 15, NULL, 10);
            uint64_t have = s->hlen - (size_t)(end + 4 - s->head);
            s->body_left = body > have ? body - have : 0;
            s->state = BODY;
        } else { /* BODY */
            if (s->body_left == 0) {
                if (counting(now_ns())) answers++;
                s->state = SEND;
                continue;
            }
            size_t n = s->body_left < sizeof buf ? s->body_left : sizeof buf;
            int r = SSL_read(s->ssl, buf, (int)n);
            if (r <= 0) {
                want(s, r);
                return;
            }
            if (counting(now_ns())) bytes += (uint64_t)r;
            bytes_total += (uint64_t)r;
            s->body_left -= (uint64_t)r;
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: tlsload full|resumed|bulk HOST PORT CONNECTIONS SECONDS"
                        " [WARMUP [PATH]]\n");
        return 2;
    }
    mode = !strcmp(argv[1], "full") ? FULL : !strcmp(argv[1], "resumed") ? RESUMED
         : !strcmp(argv[1], "bulk") ? BULK : -1;
    host = argv[2];
    int port = atoi(argv[3]), nconn = atoi(argv[4]);
    double seconds = atof(argv[5]), warmup = argc > 6 ? atof(argv[6]) : 0;
    const char *path = argc > 7 ? argv[7] : "/";
    if (mode < 0 || port <= 0 || nconn < 1 || seconds <= 0 || warmup < 0) {
        fprintf(stderr, "tlsload: bad arguments\n");
        return 2;
    }
    reqlen = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "tlsload: %s is not an IPv4 address\n", host);
        return 2;
    }

    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) die("SSL_CTX_new");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_cert_verify_callback(ctx, accept_chain, NULL);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_session);

    ep = epoll_create1(0);
    slot_t *slots = calloc((size_t)nconn, sizeof *slots);
    lat_cap = 1u << 16;
    lat = malloc(lat_cap * sizeof *lat);
    if (ep < 0 || !slots || !lat) die("setup");
    uint64_t begin = now_ns();
    uint64_t measure_from = begin + (uint64_t)(warmup * 1e9);
    stop = UINT64_MAX;
    for (int i = 0; i < nconn; i++) {
        slots[i].id = i;
        slots[i].fd = -1;
        start(&slots[i]);
    }
    double cpu_from = 0;
    struct epoll_event events[256];
    for (;;) {
        uint64_t t = now_ns();
        /* resumed: not before every slot has a ticket (a slot's first handshake is a
         * full one), unless that takes 5 s more: then the resumed share tells */
        int ready = mode != RESUMED || primed == nconn || t >= measure_from + 5000000000u;
        if (!counted_from && t >= measure_from && ready) {
            counted_from = t;
            stop = t + (uint64_t)(seconds * 1e9);
            cpu_from = cpu_seconds();
        }
        if (t >= stop) break;
        for (int i = 0; i < nconn; i++)
            if (slots[i].fd < 0) start(&slots[i]); /* after a refused connect */
        uint64_t next = counted_from ? stop : measure_from > t ? measure_from : t + 10000000u;
        int timeout = (int)((next - t) / 1000000u) + 1;
        int n = epoll_wait(ep, events, 256, timeout);
        for (int k = 0; k < n; k++) step(&slots[events[k].data.u32]);
    }
    double took = (double)(now_ns() - counted_from) / 1e9;
    double cpu = cpu_seconds() - cpu_from;
    qsort(lat, handshakes, sizeof *lat, cmp_u32);
#define PCT(p) (handshakes ? lat[(size_t)((double)(handshakes - 1) * (p))] : 0u)
    printf("{\"mode\": \"%s\", \"connections\": %d, \"seconds\": %.3f, \"handshakes\": %lu, "
           "\"resumed\": %lu, \"tickets\": %lu, \"errors\": %lu, \"handshakes_per_s\": %.1f, "
           "\"p50_us\": %u, \"p99_us\": %u, \"max_us\": %u, \"bytes\": %lu, \"answers\": %lu, "
           "\"gbit_per_s\": %.4f, \"client_cpu_share\": %.3f, \"handshakes_total\": %lu, "
           "\"bytes_total\": %lu, \"negotiated\": {%s}}\n",
           argv[1], nconn, took, (unsigned long)handshakes, (unsigned long)resumed,
           (unsigned long)tickets, (unsigned long)errors, (double)handshakes / took, PCT(0.5),
           PCT(0.99), handshakes ? lat[handshakes - 1] : 0u, (unsigned long)bytes,
           (unsigned long)answers, (double)bytes * 8 / took / 1e9, cpu / took,
           (unsigned long)handshakes_total, (unsigned long)bytes_total, negotiated);
#undef PCT
    return 0;
}
