"""An app's target-aware balancing settings (issue 23): TCP keepalive and user
timeout, MaxConnectionDuration, OnTargetDown, QueueTimeout, SlowStart, Outlier."""

from __future__ import annotations

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


def _parse_keepalive(value: object) -> Keepalive | None:
    if value is None or value is False:
        return None
    if value is True:
        return Keepalive()
    if not isinstance(value, dict):
        example = '{"Idle": 60, "Interval": 10, "Count": 6}'
        raise _Invalid(
            "TcpKeepalive", f"expected true, false or an object like {example}, {_got(value)}"
        )
    _check_keys(value, KEEPALIVE_KEYS, prefix="TcpKeepalive.")
    idle = _whole_seconds(value.get("Idle", 60), "TcpKeepalive.Idle")
    interval = _whole_seconds(value.get("Interval", 10), "TcpKeepalive.Interval")
    count = _integer(value.get("Count", 6), "TcpKeepalive.Count", 1, 127)
    return Keepalive(idle, interval, count)


def _parse_outlier(value: object) -> Outlier | None:
    if value is None or value is False:
        return None
    if value is True:
        return Outlier()
    if not isinstance(value, dict):
        example = '{"ConsecutiveFailures": 5, "BaseEjection": 30, "MaxEjectedPercent": 50}'
        raise _Invalid(
            "Outlier", f"expected true, false or an object like {example}, {_got(value)}"
        )
    _check_keys(value, OUTLIER_KEYS, prefix="Outlier.")
    return Outlier(
        _integer(value.get("ConsecutiveFailures", 5), "Outlier.ConsecutiveFailures", 1, 1000),
        _duration(value.get("BaseEjection", 30), "Outlier.BaseEjection"),
        _integer(value.get("MaxEjectedPercent", 50), "Outlier.MaxEjectedPercent", 0, 100),
    )


def _whole_seconds(value: object, field: str) -> int:
    """A duration the kernel keeps in whole seconds (keepalive: 1..32767)."""
    seconds = _duration(value, field)
    if seconds != int(seconds) or not 1 <= seconds <= 32767:
        raise _Invalid(field, f"must be whole seconds between 1 and 32767, got {_num(seconds)}")
    return int(seconds)
