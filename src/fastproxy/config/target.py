"""An app's `Targets`: an address, or an object with Address, Weight and Backup."""

from __future__ import annotations

from .addresses import _host_port
from .errors import _Invalid
from .model import MAX_WEIGHT, TARGET_KEYS, Target
from .values import _check_keys, _got, _integer, _q


def _parse_targets(value: object) -> tuple[Target, ...]:
    if not isinstance(value, (list, tuple)):
        raise _Invalid("Targets", f'expected a list of "host:port" strings, {_got(value)}')
    if not value:
        raise _Invalid("Targets", "empty list, an app needs at least one target")
    targets: list[Target] = []
    for i, item in enumerate(value):
        target = _parse_target(item, f"Targets[{i}]")
        # the address is the target's name in metrics and admin
        for first, other in enumerate(targets):
            if other.address == target.address:
                raise _Invalid(
                    f"Targets[{i}]", f"{_q(target.address)} is already listed as Targets[{first}]"
                )
        targets.append(target)
    return tuple(targets)


def _parse_target(item: object, field: str) -> Target:
    """ "host:port", or {"Address": "host:port", "Weight": 1..1000, "Backup": false}."""
    if isinstance(item, dict):
        _check_keys(item, TARGET_KEYS, prefix=field + ".")
        address = item.get("Address")
        if address is None:
            raise _Invalid(field + ".Address", "missing required key")
        address_field = field + ".Address"
        weight = _integer(item.get("Weight", 1), field + ".Weight", 1, MAX_WEIGHT)
        backup = item.get("Backup", False)
        if not isinstance(backup, bool):
            raise _Invalid(field + ".Backup", f"expected true or false, {_got(backup)}")
    else:
        address, address_field, weight, backup = item, field, 1, False
    if not isinstance(address, str):
        raise _Invalid(
            address_field,
            f'expected a "host:port" string or an object with {", ".join(TARGET_KEYS)},'
            f" {_got(address)}",
        )
    try:
        host, port = _host_port(address)
    except ValueError as exc:
        raise _Invalid(address_field, str(exc)) from None
    return Target(host, port, weight, backup)
