"""Values that are valid but probably not what was meant: said as warnings by `check`,
at start and at each reload, never refused (an operator may mean them).

The commonest: a habit from HAProxy, where timeouts are milliseconds, so that
`"Interval": 2000` meant 2 s and is here 2,000 s (over half an hour)."""

from __future__ import annotations

from .config import Config

LONG = 600.0  # seconds: an interval or connect timeout beyond 10 minutes is suspicious


def _seconds(value: float) -> str:
    return f"{value:g}s"


def warnings(config: Config) -> list[str]:
    found = []
    for app in config.apps:
        where = f'app "{app.name}"'
        check = app.health_check
        if check.interval > LONG:
            found.append(
                f"{where}: HealthCheck.Interval is {_seconds(check.interval)}, over 10 minutes"
                f' (durations are seconds: write "{check.interval:g}ms" for milliseconds)'
            )
        if check.timeout >= check.interval:
            found.append(
                f"{where}: HealthCheck.Timeout ({_seconds(check.timeout)}) is not below"
                f" HealthCheck.Interval ({_seconds(check.interval)}): a slow check is still"
                " running when the next one is due"
            )
        if app.connect_timeout > LONG:
            found.append(
                f"{where}: ConnectTimeout is {_seconds(app.connect_timeout)}, over 10 minutes"
                f' (durations are seconds: write "{app.connect_timeout:g}ms" for milliseconds)'
            )
        if 0 < app.idle_timeout < 1:
            found.append(
                f"{where}: IdleTimeout is {_seconds(app.idle_timeout)}: connections idle"
                " for under a second are closed"
            )
    return found
