"""The one exception steering raises, and how an error becomes one line."""

from __future__ import annotations


class SteeringUnavailable(Exception):
    """BPF steering cannot be used here; str() is a one-line reason."""


def describe(exc: BaseException) -> str:
    """One line for an exception: OSError's strerror and filename, or its message."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
