"""eBPF sk_lookup steering: one listening socket serves every configured port.

`bpf/steer.c` is compiled and loaded with bcc at run time, attached to the current network
namespace with a BPF link, and pinned in bpffs so that it outlives a crash and a restarted or
upgraded proxy replaces it instead of stacking a second program. Per network namespace:

    <pin_root>/<netns inode>/
        prog      the sk_lookup program ("fastproxy_steer")
        link      the BPF link attaching it to the netns: while pinned, the program stays
        ports     hash map, u16 port -> 1: the configured ports
        sockets   sockmap: slot 0 takes IPv4 lookups, slot 1 IPv6 (a dual-stack socket is
                  stored in both)
        counters  per-CPU array: lookups, steered, misses, errors
        owner     symlink whose target is "<pid>:<start time>" of the owning process

bcc is used only to compile and load, and only when the program is not in the cache yet
(cache.py): a cached program's maps are created and the program loaded through the raw
bpf(2) wrappers below, like everything after loading (maps, pins, links), so pinned objects
from another process are handled the same way as our own.
"""

from .core import (
    COUNTER_NAMES,
    POLICY_HAS_ALLOW,
    SLOT_IPV4,
    SLOT_IPV6,
    Steering,
    acl_key,
)
from .errors import SteeringUnavailable
from .loader import probe
from .pins import DEFAULT_PIN_ROOT, netns_inode

__all__ = [
    "COUNTER_NAMES",
    "DEFAULT_PIN_ROOT",
    "POLICY_HAS_ALLOW",
    "SLOT_IPV4",
    "SLOT_IPV6",
    "Steering",
    "SteeringUnavailable",
    "acl_key",
    "netns_inode",
    "probe",
]
