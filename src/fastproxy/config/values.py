"""The pieces every section's parser is made of: how a wrong value is shown (its kind,
quoted, with a "did you mean"), unknown and required keys, and the scalar values
(booleans, bounded integers, durations with units, choices, rates)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from .errors import _Invalid
from .model import MAX_DURATION, MAX_RATE


def _q(value: str) -> str:
    """Quote user text the JSON way (double quotes, escapes) so it reads like the file."""
    return json.dumps(value, ensure_ascii=False)


def _kind(value: object) -> str:
    """The JSON name of a value's type, for "expected X, got Y"."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _num(value: float) -> str:
    """A number for a message; str() of an int of thousands of digits raises ValueError."""
    if isinstance(value, int) and not -(10**18) < value < 10**18:
        return f"<about {int(abs(value).bit_length() * math.log10(2)) + 1} digits>"
    return repr(value) if isinstance(value, float) else str(value)


def _got(value: object) -> str:
    """ "got string \"abc\"": the type, plus the value when it is short and scalar."""
    kind = _kind(value)
    if isinstance(value, str):
        shown = _q(value)
    elif isinstance(value, bool) or value is None:
        shown = json.dumps(value)
    elif isinstance(value, (int, float)):
        shown = _num(value)
    else:
        return f"got {kind}"
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"got {kind} {shown}"


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    import difflib  # only for a config with a mistake in it: 7 ms off every start

    same_case = [c for c in choices if c.lower() == word.lower()]
    close = same_case or difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {_q(close[0])}?)" if close else ""


def _check_keys(obj: dict[Any, Any], known: Sequence[str], prefix: str = "") -> None:
    """Reject unknown keys (with a did-you-mean) and keys given twice, in file order."""
    for key in obj:
        if not isinstance(key, str):
            raise _Invalid(prefix + repr(key), "unknown key, keys must be strings")
        if key not in known:
            hint = _did_you_mean(key, known) or f" (known keys: {', '.join(known)})"
            raise _Invalid(prefix + key, "unknown key" + hint)
    duplicates = getattr(obj, "duplicates", ())
    if duplicates:
        raise _Invalid(prefix + duplicates[0], "key given more than once")


def _required(obj: dict[str, Any], key: str) -> Any:
    if key not in obj:
        raise _Invalid(key, "missing required key")
    return obj[key]


def _rate(value: object, field: str) -> float:
    """New connections per second, 0 = unlimited."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(field, f"expected a number of connections per second, {_got(value)}")
    if not math.isfinite(value) or not 0 <= value <= MAX_RATE:
        limit = f"{MAX_RATE:.0f}"
        raise _Invalid(field, f"must be between 0 and {limit} per second, got {_num(value)}")
    return float(value)


def _boolean(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(field, f"expected true or false, {_got(value)}")
    return value


def _integer(value: object, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(field, f"expected an integer, {_got(value)}")
    if not lo <= value <= hi:
        raise _Invalid(field, f"must be between {lo} and {hi}, got {_num(value)}")
    return value


_DURATION = r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h)?\s*"  # compiled at first use
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _duration(value: object, field: str, *, allow_zero: bool = False) -> float:
    """Seconds: a number, or a string with a unit ("250ms", "2s", "5m", "1h"; none:
    seconds); finite, > 0 (>= 0 where 0 means "off") and at most a year."""
    if isinstance(value, str):
        match = re.fullmatch(_DURATION, value)
        if match is None:
            raise _Invalid(
                field,
                f'expected a duration such as "250ms", "2s", "5m" or a number of seconds,'
                f" got {_q(value)}",
            )
        value = float(match.group(1)) * _UNITS[match.group(2)]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(field, f"expected a number of seconds, {_got(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(field, f"must be a finite number of seconds, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise _Invalid(field, f"must be {bound} seconds, got {_num(value)}")
    if value > MAX_DURATION:
        raise _Invalid(
            field, f"must be at most {MAX_DURATION:.0f} seconds (a year), got {_num(value)}"
        )
    return float(value)


def _choice(value: object, field: str, choices: Sequence[str]) -> str:
    allowed = ", ".join(_q(c) for c in choices)
    if not isinstance(value, str):
        raise _Invalid(field, f"expected one of {allowed}, {_got(value)}")
    if value not in choices:
        hint = _did_you_mean(value, choices)
        raise _Invalid(field, f"{_q(value)} is not one of {allowed}{hint}")
    return value
