// SPDX-License-Identifier: Apache-2.0
//
// fastproxy sk_lookup steering: one listening socket serves every configured port.
//
// The kernel runs this program when a TCP SYN (or any UDP datagram) arrives and it is about
// to look for a listening socket. We look the destination port up in `ports`; when it is one
// of ours, we hand the connection to the proxy's listening socket in `sockets` instead of
// letting the kernel search its tables for a socket bound to that port. The proxy thus binds
// one socket (any port) and serves thousands of ports, and a reload changes the port set by
// editing a map, with no bind() and no window where a port refuses.
//
// Compiled and loaded by bcc at run time (src/fastproxy/steering.py), attached to a network
// namespace with a BPF link, and pinned so that a restarted proxy replaces it instead of
// stacking a second program. Written in the spirit of Cloudflare's tubular: every verdict
// says why it is what it is, and we never take traffic that is not ours.
//
// Verdicts. Several sk_lookup programs may be attached to one netns; the kernel runs them
// all, and a socket selected by any of them (with SK_PASS) wins. SK_PASS without a selection
// means "not mine": the kernel carries on with its ordinary lookup. SK_DROP refuses the
// connection even if another socket is bound to the port. This program returns SK_DROP for one
// reason only: a client that an app's Allow / Deny lists refuse (admission control), on a port
// that is ours, so that such a client never costs the proxy a descriptor. Otherwise, when it
// cannot steer, the kernel's own lookup decides, which refuses the connection when
// nothing is bound to the port, exactly like a drop, but lets an operator's listener on that
// port keep working (for instance fastproxy restarted in `ports` mode after a crash left this
// program attached). Failing open costs nothing and keeps our failures ours.
//
// Counters (per CPU, summed by user space): every TCP lookup is counted in `lookups` and in
// exactly one of `steered`, `misses` (not our port or address), `errors` (our port, but we
// could not steer it) and `denied` (refused by Allow / Deny), so
// lookups == steered + misses + errors + denied.

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <linux/socket.h>

// Keys of `sockets`: the listening socket that takes IPv4 lookups and the one that takes
// IPv6 lookups. A dual-stack AF_INET6 socket (IPV6_V6ONLY=0) accepts both families, so user
// space stores it in both slots; one socket per family fills one slot each.
#define SOCKET_IPV4 0
#define SOCKET_IPV6 1

enum counter {
    COUNTER_LOOKUPS = 0,
    COUNTER_STEERED = 1,
    COUNTER_MISSES = 2,
    COUNTER_ERRORS = 3,
    COUNTER_DENIED = 4,
    COUNTER_MAX = 5,
};

// Configured destination ports (host byte order) -> 1. Sized for every port there is, so a
// config can never outgrow it; not preallocated, so memory follows the configured set.
BPF_F_TABLE("hash", u16, u8, ports, 65536, BPF_F_NO_PREALLOC);

// The proxy's listening socket(s). The value is a socket fd when user space writes it and the
// socket cookie when user space reads it back (hence 64 bits).
BPF_TABLE("sockmap", u32, u64, sockets, 2);

BPF_PERCPU_ARRAY(counters, u64, COUNTER_MAX);

// Admission control. `policies`: port -> the id of the app whose Allow / Deny lists apply
// there (the relay's app id), with POLICY_HAS_ALLOW set when the app has an Allow list. Ports
// of apps without lists are not in it. `allow_nets` / `deny_nets`: longest-prefix-match tries
// keyed by (policy, client address), IPv4 as ::ffff:a.b.c.d, so one lookup answers for a list
// of any length (a 10,000-entry deny list costs the same trie walk as a short one).
// `denied`: refused clients per policy, per CPU, for fastproxy_rejected_total{reason="deny"}.
// Not preallocated: 65536 per-CPU entries made up front cost 100 ms of every start-up (a
// whole start with 10,000 ports is meant to take less than 150 ms), and only policies that
// refused someone ever get one.
#define POLICY_HAS_ALLOW 0x80000000u
#define POLICY_ID_MASK 0xffffu
#define ACL_ENTRIES (1 << 20)

struct acl_key {
    u32 prefixlen;  // 32 (the policy) + the network's length as IPv6 (IPv4: 96 + length)
    u32 policy;     // exact: always inside the prefix
    u8 addr[16];
};

BPF_F_TABLE("hash", u16, u32, policies, 65536, BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct acl_key, u8, allow_nets, ACL_ENTRIES, BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct acl_key, u8, deny_nets, ACL_ENTRIES, BPF_F_NO_PREALLOC);
BPF_F_TABLE("percpu_hash", u32, u64, denied, 65536, BPF_F_NO_PREALLOC);

static __always_inline void count(u32 which)
{
    u64 *value = counters.lookup(&which);

    // Per-CPU slot, and sk_lookup runs with preemption disabled: a plain add is exact.
    if (value)
        *value += 1;
}

// Whether `sk` is bound to the wildcard address or to the address the connection is for.
// Our socket's own bind() says which local addresses we serve: a proxy that listens on
// 127.0.0.1 must not capture connections for the same ports on other addresses, which belong
// to whoever else binds them there.
static __always_inline int serves_address(struct bpf_sk_lookup *ctx, struct bpf_sock *sk)
{
    if (ctx->family == AF_INET) {
        // An AF_INET6 socket bound to a non-mapped IPv6 address reports 127.0.0.6 here (the
        // kernel's marker for "never IPv4"), which matches no lookup: correct.
        u32 bound = sk->src_ip4;

        return bound == 0 || bound == ctx->local_ip4;
    }

    u32 b0 = sk->src_ip6[0], b1 = sk->src_ip6[1], b2 = sk->src_ip6[2], b3 = sk->src_ip6[3];

    if ((b0 | b1 | b2 | b3) == 0)
        return 1;
    return b0 == ctx->local_ip6[0] && b1 == ctx->local_ip6[1] &&
           b2 == ctx->local_ip6[2] && b3 == ctx->local_ip6[3];
}

// Whether the app's Allow / Deny lists refuse this client: not in Allow (when there is one),
// or in Deny. Counted per policy when refused.
static __always_inline int refused(struct bpf_sk_lookup *ctx, u16 port)
{
    u32 *policy = policies.lookup(&port);
    if (!policy)
        return 0;

    struct acl_key key = {};
    key.prefixlen = 32 + 128;
    key.policy = *policy & POLICY_ID_MASK;
    if (ctx->family == AF_INET) {
        u32 ip4 = ctx->remote_ip4;  // network order, as the bytes of the address

        key.addr[10] = 0xff;
        key.addr[11] = 0xff;
        __builtin_memcpy(&key.addr[12], &ip4, 4);
    } else {
        u32 ip6[4] = {ctx->remote_ip6[0], ctx->remote_ip6[1], ctx->remote_ip6[2],
                      ctx->remote_ip6[3]};

        __builtin_memcpy(key.addr, ip6, 16);
    }
    if (!((*policy & POLICY_HAS_ALLOW) && !allow_nets.lookup(&key)) && !deny_nets.lookup(&key))
        return 0;

    u32 id = key.policy;
    u64 one = 1, *value = denied.lookup(&id);
    if (value)
        *value += 1;  // per CPU, preemption disabled: exact
    else
        denied.update(&id, &one);
    return 1;
}

// The kernel names the program after this function (15 characters at most): steering.py
// recognises fastproxy's links by it.
int fastproxy_steer(struct bpf_sk_lookup *ctx)
{
    // sk_lookup also runs for UDP. We proxy TCP only, and a UDP lookup must reach whoever
    // bound that UDP port, so pass it uncounted.
    if (ctx->protocol != IPPROTO_TCP)
        return SK_PASS;

    count(COUNTER_LOOKUPS);

    // Not a configured port: someone else's connection. Pass untouched so every other
    // program's listeners keep working as if we were not here.
    u16 port = ctx->local_port;
    if (!ports.lookup(&port)) {
        count(COUNTER_MISSES);
        return SK_PASS;
    }

    // Admission control: a client the app refuses is dropped here, before any socket takes it,
    // so it never costs the proxy a descriptor, an accept or a wake-up. SK_DROP (rather than
    // SK_PASS without a socket) because the port is ours: passing would let the kernel's own
    // lookup find some other listener on the port and hand it the very client refused here.
    if (refused(ctx, port)) {
        count(COUNTER_DENIED);
        return SK_DROP;
    }

    // An sk_lookup program attached before us already chose a socket. We do not use
    // BPF_SK_LOOKUP_F_REPLACE to take it over: two owners of one port is a configuration
    // conflict, and silently winning it would hide that. Leave their choice and count it.
    if (ctx->sk) {
        count(COUNTER_ERRORS);
        return SK_PASS;
    }

    u32 slot = ctx->family == AF_INET ? SOCKET_IPV4 : SOCKET_IPV6;
    struct bpf_sock *sk = (struct bpf_sock *)sockets.lookup(&slot);

    // Our port but no socket for this family: the proxy is gone (its socket closed, which
    // empties the slot) or listens on the other family only. Pass: the kernel's lookup then
    // refuses the connection, unless an operator's own listener holds the port.
    if (!sk) {
        count(COUNTER_ERRORS);
        return SK_PASS;
    }

    // Our port on an address our socket does not serve: not ours after all.
    if (!serves_address(ctx, sk)) {
        bpf_sk_release(sk);
        count(COUNTER_MISSES);
        return SK_PASS;
    }

    // No BPF_SK_LOOKUP_F_NO_REUSEPORT: when our socket belongs to an SO_REUSEPORT group (one
    // listening socket per worker), the kernel still picks a group member by the flow hash,
    // spreading connections over the workers exactly as for an ordinary bind().
    long err = bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk);

    // Assignment fails for a socket that cannot take this lookup (an IPV6_V6ONLY socket and
    // an IPv4 lookup, a socket that stopped listening). Count it and pass, so the kernel's
    // ordinary lookup answers instead.
    if (err) {
        count(COUNTER_ERRORS);
        return SK_PASS;
    }

    // Steered. SK_PASS with a selected socket is how sk_lookup says "deliver it here".
    count(COUNTER_STEERED);
    return SK_PASS;
}
