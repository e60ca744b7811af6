"""An app's target-aware balancing settings (issue 23): TCP keepalive and user
timeout, MaxConnectionDuration, OnTargetDown, QueueTimeout, SlowStart, Outlier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import _Invalid
from .model import KEEPALIVE_KEYS, ON_TARGET_DOWN, OUTLIER_KEYS, Keepalive, Outlier
from .values import _check_keys, _choice, _duration, _got, _integer, _num


def _parse_balancing(raw: dict[str, Any]) -> dict[str, Any]:
    """The App fields of this section, from the app's raw object."""
    return {
        "keepalive": _parse_keepalive(raw.get("TcpKeepalive")),
        "user_timeout": _duration(raw.get("TcpUserTimeout", 0), "TcpUserTimeout", allow_zero=True),
        "max_duration": _duration(
            raw.get("MaxConnectionDuration", 0), "MaxConnectionDuration", allow_zero=True
        ),
        "on_target_down": _choice(raw.get("OnTargetDown", "keep"), "OnTargetDown", ON_TARGET_DOWN),
        "queue_timeout": _duration(raw.get("QueueTimeout", 0), "QueueTimeout", allow_zero=True),
        "slow_start": _duration(raw.get("SlowStart", 0), "SlowStart", allow_zero=True),
        "outlier": _parse_outlier(raw.get("Outlier")),
    }


def _switch_or_object(
    value: object, name: str, example: str, keys: Sequence[str]
) -> dict[str, Any] | bool:
    """`true` (the defaults), `false`/absent (off), or an object of `keys`."""
    if value is None or value is False:
        return False
    if value is True:
        return True
    if not isinstance(value, dict):
        raise _Invalid(name, f"expected true, false or an object like {example}, {_got(value)}")
    _check_keys(value, keys, prefix=f"{name}.")
    return value


def _parse_keepalive(value: object) -> Keepalive | None:
    example = '{"Idle": 60, "Interval": 10, "Count": 6}'
    raw = _switch_or_object(value, "TcpKeepalive", example, KEEPALIVE_KEYS)
    if raw is False:
        return None
    default = Keepalive()
    if raw is True:
        return default
    return Keepalive(
        _whole_seconds(raw.get("Idle", default.idle), "TcpKeepalive.Idle"),
        _whole_seconds(raw.get("Interval", default.interval), "TcpKeepalive.Interval"),
        _integer(raw.get("Count", default.count), "TcpKeepalive.Count", 1, 127),
    )


def _parse_outlier(value: object) -> Outlier | None:
    example = '{"ConsecutiveFailures": 5, "BaseEjection": 30, "MaxEjectedPercent": 50}'
    raw = _switch_or_object(value, "Outlier", example, OUTLIER_KEYS)
    if raw is False:
        return None
    default = Outlier()
    if raw is True:
        return default
    return Outlier(
        _integer(
            raw.get("ConsecutiveFailures", default.consecutive_failures),
            "Outlier.ConsecutiveFailures",
            1,
            1000,
        ),  # fmt: skip
        _duration(raw.get("BaseEjection", default.base_ejection), "Outlier.BaseEjection"),
        _integer(
            raw.get("MaxEjectedPercent", default.max_ejected_percent),
            "Outlier.MaxEjectedPercent",
            0,
            100,
        ),  # fmt: skip
    )


def _whole_seconds(value: object, field: str) -> int:
    """A duration the kernel keeps in whole seconds (keepalive: 1..32767)."""
    seconds = _duration(value, field)
    if seconds != int(seconds) or not 1 <= seconds <= 32767:
        raise _Invalid(field, f"must be whole seconds between 1 and 32767, got {_num(seconds)}")
    return int(seconds)
