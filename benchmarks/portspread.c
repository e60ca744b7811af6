/* Connection load spread over a range of ports: every request on a new connection, to
 * the next port of the range in turn (round robin), so that each port of a 10,000-port
 * proxy carries traffic rather than one.
 *
 *   portspread HOST FIRST_PORT COUNT CONNECTIONS SECONDS [PATH]
 *
 * CONNECTIONS connections at once, each: a non-blocking connect to the next port, one
 * `GET PATH` with `Connection: close`, the whole answer (by Content-Length), then the
 * server's end of the connection (the server closes first: no TIME_WAIT here), then the
 * next connection. New connections start for SECONDS, or until SIGTERM (a load that
 * lasts as long as what it surrounds: SECONDS is then an upper bound); those still open
 * then get 2 s to finish. Errors: a refused or failed connect, a reset, an end before the whole answer,
 * an answer that is not 2xx, a connection unfinished after the grace time.
 *
 * Prints one JSON line: answered (within the SECONDS), errors (by kind too), rate,
 * latency p50/p99 in microseconds (connect to whole answer), how many distinct ports
 * answered, and client_cpu_share: this program's CPU time over the run's length (near 1,
 * the load generator is the bottleneck). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, READING, DRAINING };

typedef struct {
    int fd, state;
    uint64_t started;
    char buf[4096];
    size_t len;
} conn_t;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static struct sockaddr_in addr;
static int ep, first_port, count;
static uint64_t next_port;
static uint8_t *hit;
static uint64_t refused, failed, short_answers, bad_status, unfinished;
static volatile sig_atomic_t stopping;

static void on_term(int sig) { (void)sig; stopping = 1; }

/* A new connection on slot i, to the next port in turn. */
static void open_conn(conn_t *c, uint32_t i) {
    int port = first_port + (int)(next_port++ % (uint64_t)count);
    addr.sin_port = htons((uint16_t)port);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) { perror("socket"); exit(2); }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = CONNECTING;
    c->len = 0;
    c->started = now_ns();
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        if (errno == ECONNREFUSED) refused++; else failed++;
        close(c->fd);
        c->fd = -1;
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = i};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void close_conn(conn_t *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

/* Length of the whole answer at the start of buf, 0 if not complete yet. */
static size_t answer_length(conn_t *c) {
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t body = 0;
    char *cl = memmem(c->buf, (size_t)(end - c->buf), "Content-Length:", 15);
    if (cl) body = strtoul(cl + 15, NULL, 10);
    size_t total = (size_t)(end - c->buf) + 4 + body;
    return total <= c->len ? total : 0;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: portspread HOST FIRST_PORT COUNT CONNECTIONS SECONDS [PATH]\n");
        return 2;
    }
    const char *host = argv[1], *path = argc > 6 ? argv[6] : "/";
    first_port = atoi(argv[2]);
    count = atoi(argv[3]);
    int nconn = atoi(argv[4]);
    double seconds = atof(argv[5]);
    if (first_port < 1 || count < 1 || first_port + count > 65536 || nconn < 1 || seconds <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    char request[512];
    int reqlen = snprintf(request, sizeof request,
                          "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, host);
    addr.sin_family = AF_INET;
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "bad host %s\n", host);
        return 2;
    }
    ep = epoll_create1(0);
    conn_t *conns = calloc((size_t)nconn, sizeof *conns);
    hit = calloc((size_t)count, 1);
    size_t cap = 1 << 20, answered = 0, late = 0;
    uint32_t *lat = malloc(cap * sizeof *lat);
    if (ep < 0 || !conns || !hit || !lat) { perror("setup"); return 2; }

    struct sigaction term = {.sa_handler = on_term};
    sigaction(SIGTERM, &term, NULL);
    double cpu_from = cpu_seconds();
    uint64_t start = now_ns(), stop = start + (uint64_t)(seconds * 1e9);
    uint64_t give_up = stop + 2000000000u;
    for (int i = 0; i < nconn; i++) open_conn(&conns[i], (uint32_t)i);
    struct epoll_event events[256];
    int open = nconn;
    while (open > 0) {
        uint64_t t = now_ns();
        if (stopping && t < stop) {  /* the clock stops now */
            stop = t;
            give_up = stop + 2000000000u;
        }
        if (t > give_up) break;
        /* Slots whose connect failed at once start again (while the clock runs). */
        open = 0;
        for (int i = 0; i < nconn; i++) {
            if (conns[i].fd < 0 && t < stop) open_conn(&conns[i], (uint32_t)i);
            open += conns[i].fd >= 0;
        }
        if (!open) break;
        int n = epoll_wait(ep, events, 256, 10);
        for (int k = 0; k < n; k++) {
            uint32_t i = events[k].data.u32;
            conn_t *c = &conns[i];
            if (c->fd < 0) continue;
            if (c->state == CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err || send(c->fd, request, (size_t)reqlen, MSG_NOSIGNAL) != reqlen) {
                    if (err == ECONNREFUSED) refused++; else failed++;
                    close_conn(c);
                    goto next;
                }
                c->state = READING;
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                continue;
            }
            char *into = c->state == READING ? c->buf + c->len : c->buf;
            size_t room = c->state == READING ? sizeof c->buf - c->len : sizeof c->buf;
            ssize_t got = recv(c->fd, into, room, 0);
            if (got < 0 && errno == EAGAIN) continue;
            if (c->state == DRAINING) {
                if (got > 0) continue;
                close_conn(c);  /* the server's end (or a reset after a whole answer) */
                goto next;
            }
            if (got <= 0) {
                if (got < 0) failed++; else short_answers++;
                close_conn(c);
                goto next;
            }
            c->len += (size_t)got;
            size_t whole = answer_length(c);
            if (!whole) {
                if (c->len == sizeof c->buf) { short_answers++; close_conn(c); goto next; }
                continue;
            }
            if (c->len < 12 || c->buf[9] != '2') {
                bad_status++;
            } else {
                uint64_t done = now_ns();
                int port = ntohs(addr.sin_port);
                struct sockaddr_in peer;
                socklen_t plen = sizeof peer;
                if (getpeername(c->fd, (struct sockaddr *)&peer, &plen) == 0)
                    port = ntohs(peer.sin_port);
                hit[port - first_port] = 1;
                if (done <= stop) {
                    if (answered == cap) {
                        cap *= 2;
                        lat = realloc(lat, cap * sizeof *lat);
                        if (!lat) { perror("realloc"); return 2; }
                    }
                    lat[answered++] = (uint32_t)((done - c->started) / 1000u);
                } else {
                    late++;
                }
            }
            c->state = DRAINING;
            continue;
        next:
            if (now_ns() < stop) open_conn(c, i);
        }
        /* A connection whose answer is whole and whose server has not closed yet is not
         * kept waiting past the clock: it is finished. */
        if (now_ns() >= stop)
            for (int i = 0; i < nconn; i++)
                if (conns[i].fd >= 0 && conns[i].state == DRAINING) close_conn(&conns[i]);
    }
    for (int i = 0; i < nconn; i++)
        if (conns[i].fd >= 0) {
            if (conns[i].state != DRAINING) unfinished++;
            close_conn(&conns[i]);
        }
    double took = (double)(now_ns() - start) / 1e9, cpu = cpu_seconds() - cpu_from;
    seconds = (double)(stop - start) / 1e9;  /* the window new connections started in */
    size_t ports_hit = 0;
    for (int p = 0; p < count; p++) ports_hit += hit[p];
    qsort(lat, answered, sizeof *lat, cmp_u32);
#define PCT(p) (answered ? lat[(size_t)((double)(answered - 1) * (p))] : 0u)
    uint64_t errors = refused + failed + short_answers + bad_status + unfinished;
    printf("{\"answered\": %zu, \"answered_late\": %zu, \"errors\": %lu, \"refused\": %lu, "
           "\"failed\": %lu, \"short\": %lu, \"bad_status\": %lu, \"unfinished\": %lu, "
           "\"seconds\": %.3f, \"rate\": %.1f, \"p50_us\": %u, \"p99_us\": %u, "
           "\"ports_hit\": %zu, \"client_cpu_share\": %.3f}\n",
           answered, late, errors, refused, failed, short_answers, bad_status, unfinished,
           seconds, (double)answered / seconds, PCT(0.50), PCT(0.99), ports_hit,
           took > 0 ? cpu / took : 0.0);
    return 0;
}
