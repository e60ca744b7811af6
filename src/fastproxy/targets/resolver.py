"""Turns target hosts into addresses without ever blocking the proxy.

IP literals resolve at once. Hostnames are looked up in a small thread pool; a name
that does not resolve is simply absent (its target is down) and is tried again
later, so a dead DNS entry never stops start-up or a reload.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
from collections.abc import Iterable

Address = tuple[int, str]  # (socket family, IP text)


def literal(host: str) -> Address | None:
    """The address of an IP literal, or None for a hostname."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip))


def lookup(host: str) -> Address | None:
    """Resolve one host; IPv4 is preferred when a name has both, since backends
    commonly listen on 0.0.0.0 only. None when it does not resolve."""
    found = literal(host)
    if found is not None:
        return found
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    addresses = [(int(family), str(sockaddr[0])) for family, _, _, _, sockaddr in infos]
    for family, ip in addresses:
        if family == socket.AF_INET:
            return (family, ip)
    return addresses[0] if addresses else None


def resolve_all(hosts: Iterable[str], timeout: float) -> dict[str, Address | None]:
    """Resolve many hosts in parallel, waiting at most `timeout` seconds; hosts not
    answered by then map to None (down for now)."""
    result: dict[str, Address | None] = {}
    names = []
    for host in set(hosts):
        found = literal(host)
        if found is not None:
            result[host] = found
        else:
            names.append(host)
    if not names:
        return result
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(names)))
    futures = {pool.submit(lookup, name): name for name in names}
    done, _ = concurrent.futures.wait(futures, timeout=timeout)
    for future in futures:
        result[futures[future]] = future.result() if future in done else None
    # Do not wait for lookups still hanging in the resolver; they finish on their own.
    pool.shutdown(wait=False)
    return result
