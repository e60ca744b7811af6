"""An app's admission settings: PROXY protocol senders, Allow / Deny networks,
per-source masks and connection rates."""

from __future__ import annotations

import ipaddress

from .errors import _Invalid
from .values import _check_keys, _got, _integer, _q


def _parse_accept_proxy(value: object) -> tuple[bool, tuple[str, ...]]:
    """AcceptProxyProtocol: false, true (any sender: see server.py's warning), or
    the CIDRs of the balancers trusted to name the client."""
    field = "AcceptProxyProtocol"
    if isinstance(value, bool):
        return value, ()
    if not isinstance(value, (list, tuple)):
        raise _Invalid(
            field,
            f'expected true, false or a list of trusted sender CIDRs ("10.0.0.0/8"), {_got(value)}',
        )
    if not value:
        raise _Invalid(field, "empty list, write false to accept no PROXY header")
    return True, _parse_cidrs(value, field)


def _parse_cidrs(value: object, field: str) -> tuple[str, ...]:
    """A list of networks ("10.0.0.0/8", "2001:db8::/32"; a bare address is one
    host), canonical and without repeats."""
    if not isinstance(value, (list, tuple)):
        raise _Invalid(field, f'expected a list of CIDRs ("10.0.0.0/8"), {_got(value)}')
    nets: dict[str, None] = {}
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, str):
            raise _Invalid(where, f'expected a CIDR string ("10.0.0.0/8"), {_got(item)}')
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise _Invalid(
                where, f'{_q(item)} is not a CIDR ("10.0.0.0/8", "2001:db8::/32")'
            ) from None
        try:
            ipaddress.ip_network(item)
        except ValueError:
            raise _Invalid(
                where, f"{_q(item)} has bits set past its prefix, did you mean {net}?"
            ) from None
        nets[str(net)] = None
    return tuple(nets)


def _parse_source_mask(value: object) -> tuple[int, int]:
    if not isinstance(value, dict):
        example = '{"IPv4": 32, "IPv6": 64}'
        raise _Invalid("SourceMask", f"expected an object like {example}, {_got(value)}")
    _check_keys(value, ("IPv4", "IPv6"), prefix="SourceMask.")
    v4 = _integer(value.get("IPv4", 32), "SourceMask.IPv4", 1, 32)
    v6 = _integer(value.get("IPv6", 64), "SourceMask.IPv6", 1, 128)
    return v4, v6
