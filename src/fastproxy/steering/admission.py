"""Allow / Deny in the sk_lookup program (bpf steering): which port refuses whom.

A port's policy is its app's id (the relay's), so a deny list is written once per app
however many ports it has. On a port shared by server name the program cannot know
the app yet: the port gets a policy only when all its apps have the same lists, and
otherwise the relay alone enforces them, once the ClientHello names the app.
"""

from __future__ import annotations

import ipaddress

from ..config import Config
from ..targets.routing import Routes
from . import POLICY_HAS_ALLOW, acl_key

Policies = tuple[dict[int, int], set[bytes], set[bytes]]


def _keys(policy: int, cidrs: tuple[str, ...]) -> set[bytes]:
    keys = set()
    for text in cidrs:
        net = ipaddress.ip_network(text)
        if net.version == 4:
            address, length = (0xFFFF << 32) | int(net.network_address), net.prefixlen + 96
        else:
            address, length = int(net.network_address), net.prefixlen
        keys.add(acl_key(policy, length, address))
    return keys


def policies(config: Config, routes: Routes) -> Policies:
    """(port -> policy word, allow keys, deny keys) for Steering.set_admission."""
    ports: dict[int, int] = {}
    allow: set[bytes] = set()
    deny: set[bytes] = set()
    written: set[int] = set()
    if not any(app.allow or app.deny for app in config.apps):
        return ports, allow, deny  # the common case: no walk over every port at start
    for port, apps in config.port_apps().items():
        lists = {(app.allow, app.deny) for app in apps}
        if len(lists) != 1 or lists == {((), ())}:
            continue
        app = apps[0]
        policy = routes.apps[app.name].app_id
        ports[port] = policy | (POLICY_HAS_ALLOW if app.allow else 0)
        if policy not in written:
            written.add(policy)
            allow |= _keys(policy, app.allow)
            deny |= _keys(policy, app.deny)
    return ports, allow, deny
