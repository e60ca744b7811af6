"""What admission control costs per connection, measured where it runs rather than
through a loaded wrk run (feature_cost.py has those):

- in the sk_lookup program (bpf/steer.c), per lookup: the program run by the kernel's
  BPF_PROG_TEST_RUN on a made-up TCP SYN lookup, many times, with the maps filled as
  fastproxy fills them. Every new connection to a steered port pays this in the kernel
  (in the connecting side's softirq, where no process's CPU time shows it).
- in the relay, per accepted client: admit_at_accept() (relay/admission.pxi) in a
  loop, thread CPU time (Allow / Deny at accept, the token buckets, the keyed hash).

    python benchmarks/sk_lookup_cost.py [REPEAT] [ROUNDS]      (defaults 200000, 5; root)

Runs in a network namespace of its own; bounded (variants x ROUNDS x REPEAT runs)."""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import statistics
import struct
import sys

from fastproxy import _relay, netns
from fastproxy.steering import POLICY_HAS_ALLOW, Steering, acl_key
from fastproxy.steering.bpfsys import _bpf_attr
from feature_cost import deny_list

BPF_PROG_TEST_RUN = 10
ATTR_SIZE = 80
PORT = 18080
APP = 7


def keys(cidrs: list[str]) -> set[bytes]:
    out = set()
    for text in cidrs:
        net = ipaddress.ip_network(text)
        value, length = int(net.network_address), net.prefixlen
        if net.version == 4:
            value, length = (0xFFFF << 32) | value, length + 96
        out.add(acl_key(APP, length, value))
    return out


def lookup_ctx(client: str) -> bytes:
    """struct bpf_sk_lookup for a SYN from client:40000 to 127.0.0.1:PORT."""
    return struct.pack(
        "=QII4s16sHxx4s16sII",
        0,
        socket.AF_INET,
        socket.IPPROTO_TCP,
        socket.inet_aton(client),
        bytes(16),
        socket.htons(40000),
        socket.inet_aton("127.0.0.1"),
        bytes(16),
        PORT,
        0,
    )


def run(prog_fd: int, client: str, repeat: int) -> tuple[float, int]:
    """(ns per run, the program's verdict: 1 SK_PASS, 0 SK_DROP)."""
    ctx = ctypes.create_string_buffer(lookup_ctx(client), 72)
    out = ctypes.create_string_buffer(72)
    attr = ctypes.create_string_buffer(
        struct.pack(
            "=IIIIQQIIIIQQ",
            prog_fd,
            0,
            0,
            0,
            0,
            0,
            repeat,
            0,
            72,
            72,
            ctypes.addressof(ctx),
            ctypes.addressof(out),
        ),  # fmt: skip
        ATTR_SIZE,
    )
    _bpf_attr(BPF_PROG_TEST_RUN, attr)
    retval, duration = (
        struct.unpack_from("=4xI", attr.raw)[0],
        struct.unpack_from("=I", attr.raw, 36)[0],
    )
    return float(duration), retval


def relay_costs(big: list[str], rounds: int) -> None:
    cases = {
        "nothing": {},
        "Allow 1 + Deny 1, allowed": {"allow": ["127.0.0.0/8"], "deny": ["192.0.2.0/24"]},
        "Deny 10,000, not matched": {"deny": big},
        "Deny 10,000, matched": {"deny": [*big, "127.0.0.2/32"], "ip": "127.0.0.2"},
        "MaxConnectionRate": {"rate": 1e6},
        "MaxConnectionRatePerSource": {"source_rate": 1e6},
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            case = dict(case)
            ip = case.pop("ip", "127.0.0.1")
            results[name].append(_relay.admission_cost_for_tests(ip, 1_000_000, **case))
    for name, values in results.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"relay: {name:27s} {statistics.median(values):6.1f} ns/client ({shown})")


def main() -> None:
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    big = deny_list(10_000)
    relay_costs(big, rounds)
    with netns.temporary("fp-sklookup-cost"):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        steering = Steering.prepare([listener], [PORT])
        try:
            prog = steering._objects.fds["prog"]
            variants = {
                "no Allow / Deny": ({}, set(), set(), "127.0.0.1"),
                "Deny 1 entry, not matched": (
                    {PORT: APP}, set(), keys(["192.0.2.0/24"]), "127.0.0.1"),
                "Allow 1 + Deny 1, allowed": (
                    {PORT: APP | POLICY_HAS_ALLOW}, keys(["127.0.0.0/8"]),
                    keys(["192.0.2.0/24"]), "127.0.0.1"),
                "Deny 10,000, not matched": ({PORT: APP}, set(), keys(big), "127.0.0.1"),
                "Deny 10,000, matched (SK_DROP)": (
                    {PORT: APP}, set(), keys([*big, "127.0.0.2/32"]), "127.0.0.2"),
            }  # fmt: skip
            results: dict[str, list[float]] = {name: [] for name in variants}
            verdicts = {}
            for _ in range(rounds):
                for name, (policies, allow, deny, client) in variants.items():
                    steering.set_admission(policies, allow, deny)
                    ns, verdict = run(prog, client, repeat)
                    results[name].append(ns)
                    verdicts[name] = "SK_PASS" if verdict == 1 else "SK_DROP"
            for name, values in results.items():
                shown = ", ".join(f"{v:.0f}" for v in values)
                print(f"sk_lookup: {name:31s} {statistics.median(values):5.0f} ns/lookup ({shown})"
                      f" {verdicts[name]}")  # fmt: skip
        finally:
            steering.release()
            listener.close()


if __name__ == "__main__":
    main()
