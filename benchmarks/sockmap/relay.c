// SPDX-License-Identifier: Apache-2.0
//
// fastproxy's former in-kernel relay (`Relay: sockmap`, taken out of the product: see
// README.md beside this file): an sk_skb verdict program that moves each socket's bytes
// straight to its peer's send side, so the proxy is never woken for data.
//
// Maps. User space (duplicates.py here; the relay's relay/sockmap.pxi up to e885a6a)
// pairs a connection's two sockets once the connect has succeeded and every preface
// (PROXY header in and out, ClientHello) is done: `peers` says where each socket's bytes
// go, `socks` holds both sockets as redirect targets, and `sources` holds the sockets
// whose bytes this program moves: it is the map the program is attached to (attach type
// BPF_SK_SKB_VERDICT = 38: no stream parser, each skb as TCP queued it).
// Two maps, so that both sockets are targets before either is a source: no byte is
// ever redirected to a socket not yet in place.
//
// Verdicts. Redirect to the peer's egress (flags 0). SK_PASS leaves the bytes to the
// socket itself, where user space could still read them: only for a socket with no peer
// entry, which never happens while it is a source (user space adds the entry first and
// takes the socket out of `sources` before removing it). SK_DROP only for an skb that
// carries no byte (see below).
//
// Counters: `peers` holds, per socket, the bytes redirected from it (added atomically: a
// socket's skbs may be handled on any CPU). The proxy reads them for bytes_in and
// bytes_out, for activity against the idle timeout, and to know when every byte of a
// direction has reached the peer's send queue (only then may the FIN follow).
//
// Known kernel limits (Linux 6.18; found or checked while writing this):
// - The redirect now and then sends one segment twice: one or two whole skbs (64 KiB each
//   on loopback) come out again right after themselves, and the program's counter counts
//   them twice, so the kernel ran the verdict twice on them. Seen in 12 of 160 streams of
//   256 MiB each way with the sockets in an epoll set (registered with no events is
//   enough; the relay needs epoll for FIN and reset) and in 1 of 130 without. No fastproxy
//   code runs in between: duplicates.py (`make sockmap-duplicates`) shows it with bare
//   sockets. A relay that may corrupt a stream is not something to offer, so the mode
//   was refused unless FASTPROXY_UNSAFE_SOCKMAP=1 (for measuring), then removed.
// - No backpressure on redirect to egress: what the peer cannot send yet waits on its
//   psock (ingress_skb list, sent by a kernel worker as room appears) without any limit,
//   and is not charged to the receiving socket, so its window never closes. A peer that
//   never reads lets the other side push into kernel memory without bound (1 GiB in 5 s
//   in our test). Pausing a source (taking it out of `sources`, where its bytes would wait
//   in its receive queue) under load loses an skb now and then: a verdict running as the
//   program is detached finds no program and drops the skb, which TCP already
//   acknowledged. So this relay does not pause, and has no backpressure.
// - Bytes queued on a socket before it becomes a source are not handed to the program
//   until the next skb arrives; user space sets SO_RCVLOWAT, which runs the data-ready
//   hook at once.
// - The FIN arrives as an skb of its own with no payload; redirected, its empty send fails
//   (EPIPE, reported on the peer) once user space has shut the peer's write side.
// - Only established sockets may join a map (one that received a FIN is refused, EOPNOTSUPP).
// - Removal from every map drops the psock and with it whatever is still queued on it:
//   user space removes sockets only when it closes them.
// - On this kernel every skb the program takes still wakes the socket's readers
//   (EPOLLIN), so user space must not ask for EPOLLIN on a paired socket.
// - MSG_PEEK, SIOCINQ and recv() on a member socket see only its psock's ingress queue
//   (SIOCINQ counts that queue, not the receive queue); splice() cannot read a member
//   socket; TCP urgent data is carried in line; kTLS sockets cannot join (TLS passes
//   through as bytes, which is all the proxy does with it).
// - bpf_tcp_sock() is not allowed in sk_skb programs; bcc's BPF_SOCKHASH has no lookup().

#include <uapi/linux/bpf.h>

struct peer {
    u64 cookie;     // the socket this one's bytes go to
    u64 bytes;      // redirected from this socket so far
};

BPF_SOCKHASH(socks, u64, 131072);
BPF_SOCKHASH(sources, u64, 131072);
BPF_HASH(peers, u64, struct peer, 131072);

int fastproxy_relay(struct __sk_buff *skb)
{
    u64 cookie = bpf_get_socket_cookie(skb);
    struct peer *p;
    u64 to;

    if (skb->len == 0)
        // The FIN's own skb: no byte to carry. User space sees the FIN (EPOLLRDHUP) and
        // passes it on after the last byte, so dropping this loses nothing.
        return SK_DROP;
    p = peers.lookup(&cookie);
    if (!p)
        return SK_PASS;     // not (or no longer) paired: the bytes stay with the socket
    to = p->cookie;
    __sync_fetch_and_add(&p->bytes, skb->len);
    return socks.sk_redirect_hash(skb, &to, 0);
}
