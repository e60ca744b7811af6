"""ConfigError, the one line every problem of a config becomes, and `_Invalid`, a
problem in one field before the file and app are added to it."""

from __future__ import annotations

import re


class ConfigError(Exception):
    """One-line, human message; str(err) is what the CLI prints after 'error: '."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class _Invalid(Exception):
    """A problem in one field; the caller adds the file and app to make a ConfigError."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason


def _error(source: str, where: str | None, err: _Invalid) -> ConfigError:
    parts = [source, where, err.field, err.reason]
    return ConfigError(": ".join(p for p in parts if p))


# splitlines() breaks on all of these; a CLI message must stay on one line. Patterns
# that most configs never need are compiled at their first use (re's cache), not at
# every start (config/*.py, targets/health.py).
_LINE_BREAKS = "[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]"


def _one_line(text: str) -> str:
    return re.sub(_LINE_BREAKS, lambda m: ascii(m.group())[1:-1], text)
