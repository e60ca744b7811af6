/* Open-loop HTTP load: requests sent on a fixed schedule whatever the answers do, the
 * latency of each measured from the time it was MEANT to be sent (no coordinated
 * omission: a stalled proxy delays the answers, not the schedule).
 *
 *   openloop HOST PORT CONNECTIONS RATE SECONDS [PATH [WARMUP]]
 *
 * Request i is due at start + i/RATE and goes on connection i % CONNECTIONS, pipelined
 * behind that connection's earlier requests (HTTP/1.1 keep-alive). Answers are parsed
 * by Content-Length. Prints one JSON line: requests sent and answered, errors, achieved
 * rate, and latency percentiles in microseconds from a sorted array of every latency.
 * Requests unanswered 2 s after the last send count as errors.
 *
 * RATE 0 is a closed loop instead: every connection keeps one request in flight, the
 * next sent as soon as its answer is whole. All connections are open before the clock
 * starts; the first WARMUP seconds (default 0) are not counted (the proxy's own connects
 * to its backend, its first allocations), then SECONDS are: the answers that arrive in
 * that window, and the latency of each from its send.
 *
 * Both print client_cpu_share too: this program's CPU time over the counted window's
 * length; near 1, the load generator itself is the bottleneck. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    char buf[65536];
    size_t len;
    uint64_t *due;        /* intended send times of the requests in flight, a ring */
    size_t head, count, cap;
} conn_t;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what) { perror(what); exit(2); }

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* One whole answer at the start of c->buf: its length, or 0 if not complete yet. */
static size_t answer_length(conn_t *c) {
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t body = 0;
    char *cl = memmem(c->buf, (size_t)(end - c->buf), "Content-Length:", 15);
    if (cl) body = strtoul(cl + 15, NULL, 10);
    size_t total = (size_t)(end - c->buf) + 4 + body;
    return total <= c->len ? total : 0;
}

/* answered_total: every answer, the warm-up's too (what the proxy's CPU was spent on). */
static void print_figures(uint64_t sent, uint64_t answered, uint64_t answered_total,
                          uint64_t errors, double took, uint32_t *lat, double cpu) {
    qsort(lat, answered, sizeof *lat, cmp_u32);
#define PCT(p) (answered ? lat[(size_t)((double)(answered - 1) * (p))] : 0u)
    printf("{\"sent\": %lu, \"answered\": %lu, \"errors\": %lu, \"seconds\": %.3f, "
           "\"rate\": %.1f, \"p50_us\": %u, \"p90_us\": %u, \"p99_us\": %u, "
           "\"p999_us\": %u, \"max_us\": %u, \"client_cpu_share\": %.3f, "
           "\"answered_total\": %lu}\n",
           (unsigned long)sent, (unsigned long)answered, (unsigned long)errors, took,
           took > 0 ? (double)answered / took : 0.0, PCT(0.5), PCT(0.9), PCT(0.99),
           PCT(0.999), answered ? lat[answered - 1] : 0u, took > 0 ? cpu / took : 0.0,
           (unsigned long)answered_total);
#undef PCT
}

/* The closed loop (RATE 0): see the top of this file. */
static int closed_loop(conn_t *conns, int nconn, int ep, const char *request, int reqlen,
                       double seconds, double warmup) {
    size_t cap = 1u << 16;
    uint32_t *lat = malloc(cap * sizeof *lat);
    if (!lat) die("malloc");
    uint64_t errors = 0, sent = 0, answered = 0, answered_total = 0, counted_from = 0;
    double cpu_from = 0;
    uint64_t start = now_ns(), measure_from = start + (uint64_t)(warmup * 1e9);
    uint64_t stop = UINT64_MAX;  /* set once counting starts: a full window however late */
    for (int i = 0; i < nconn; i++) {
        conn_t *c = &conns[i];
        if (send(c->fd, request, (size_t)reqlen, MSG_NOSIGNAL) != reqlen) { errors++; continue; }
        c->due[0] = start;
        c->head = 0;
        c->count = 1;
    }
    struct epoll_event events[256];
    for (;;) {
        uint64_t t = now_ns();
        if (!counted_from && t >= measure_from) {
            counted_from = t;
            stop = t + (uint64_t)(seconds * 1e9);
            cpu_from = cpu_seconds();
        }
        if (t >= stop) break;
        uint64_t next = counted_from ? stop : measure_from;
        int timeout = (int)((next - t) / 1000000u) + 1;
        int n = epoll_wait(ep, events, 256, timeout);
        uint64_t arrived = now_ns();
        for (int k = 0; k < n; k++) {
            conn_t *c = &conns[events[k].data.u32];
            ssize_t got = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN) continue;
                errors += c->count;  /* closed or failed with an answer owed */
                c->count = 0;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                continue;
            }
            c->len += (size_t)got;
            size_t whole;
            while (c->count && (whole = answer_length(c)) > 0) {
                c->count = 0;
                answered_total++;
                if (counted_from && arrived < stop) {
                    if (answered == cap) {
                        cap *= 2;
                        lat = realloc(lat, cap * sizeof *lat);
                        if (!lat) die("realloc");
                    }
                    lat[answered++] = (uint32_t)((arrived - c->due[0]) / 1000u);
                }
                memmove(c->buf, c->buf + whole, c->len - whole);
                c->len -= whole;
                if (send(c->fd, request, (size_t)reqlen, MSG_NOSIGNAL) != reqlen) {
                    errors++;
                } else {
                    c->due[0] = now_ns();
                    c->count = 1;
                    sent += counted_from ? 1 : 0;
                }
            }
        }
    }
    double took = counted_from ? (double)(now_ns() - counted_from) / 1e9 : 0.0;
    print_figures(sent, answered, answered_total, errors, took, lat, cpu_seconds() - cpu_from);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: openloop HOST PORT CONNECTIONS RATE SECONDS [PATH [WARMUP]]\n");
        return 2;
    }
    const char *host = argv[1], *path = argc > 6 ? argv[6] : "/";
    int port = atoi(argv[2]), nconn = atoi(argv[3]);
    double rate = atof(argv[4]), seconds = atof(argv[5]), warmup = argc > 7 ? atof(argv[7]) : 0;
    if (nconn < 1 || rate < 0 || seconds <= 0 || warmup < 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    uint64_t total = (uint64_t)(rate * seconds);
    if (total < 1) total = 1;
    char request[512];
    int reqlen = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host);

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    int ep = epoll_create1(0);
    conn_t *conns = calloc((size_t)nconn, sizeof *conns);
    uint32_t *lat = malloc(total * sizeof *lat);
    if (!conns || !lat || ep < 0) die("setup");
    size_t per_conn = total / (size_t)nconn + 2;
    for (int i = 0; i < nconn; i++) {
        conn_t *c = &conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->cap = per_conn;
        c->due = malloc(per_conn * sizeof *c->due);
        if (!c->due) die("malloc");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    if (rate == 0) return closed_loop(conns, nconn, ep, request, reqlen, seconds, warmup);
    double cpu_from = cpu_seconds();

    uint64_t errors = 0, sent = 0, answered = 0, interval = (uint64_t)(1e9 / rate);
    uint64_t start = now_ns(), stop_sending = start + (uint64_t)(seconds * 1e9);
    uint64_t give_up = stop_sending + 2000000000u;
    struct epoll_event events[256];
    while (answered + errors < total) {
        uint64_t t = now_ns();
        if (t > give_up) break;
        /* Send everything that is due (a late wake-up sends the backlog at once). */
        while (sent < total && start + sent * interval <= t) {
            conn_t *c = &conns[sent % (uint64_t)nconn];
            if (c->fd < 0 || c->count == c->cap ||
                send(c->fd, request, (size_t)reqlen, MSG_NOSIGNAL) != reqlen) {
                errors++;
            } else {
                c->due[(c->head + c->count++) % c->cap] = start + sent * interval;
            }
            sent++;
        }
        int timeout = 1;
        if (sent < total) {
            uint64_t next = start + sent * interval;
            timeout = next > t ? (int)((next - t) / 1000000u) : 0;
        }
        int n = epoll_wait(ep, events, 256, timeout);
        uint64_t arrived = now_ns();
        for (int k = 0; k < n; k++) {
            conn_t *c = &conns[events[k].data.u32];
            ssize_t got = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN) continue;
                errors += c->count;  /* closed or failed with answers owed */
                c->count = 0;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                continue;
            }
            c->len += (size_t)got;
            size_t whole;
            while (c->count && (whole = answer_length(c)) > 0) {
                uint64_t due = c->due[c->head];
                c->head = (c->head + 1) % c->cap;
                c->count--;
                lat[answered++] = (uint32_t)((arrived - due) / 1000u);
                memmove(c->buf, c->buf + whole, c->len - whole);
                c->len -= whole;
            }
        }
    }
    double took = (double)(now_ns() - start) / 1e9;
    print_figures(sent, answered, answered, total - answered, took, lat, cpu_seconds() - cpu_from);
    return 0;
}
