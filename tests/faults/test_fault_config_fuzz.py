"""Config fuzzing: random mutations of valid configs, checked with `fastproxy check`
in-process. Each gives a one-line error (exit 2) or a valid config (exit 0: checked
against the spec's rules here, not by config.py), never a traceback, a hang or a crash."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy.cli import main
from records import Tally

VALID: dict[str, Any] = {
    "Listen": ["127.0.0.1", "::1"],
    "Admin": "127.0.0.1:9901",
    "Workers": 2,
    "Steering": "auto",
    "DrainTimeout": 30,
    "Apps": [
        {
            "Name": "five-thousand",
            "Ports": [5001, 5200, "5300-5310"],
            "Targets": ["tcp-echo.fly.dev:5001", {"Address": "[::1]:5002", "Weight": 3}],
            "Balance": "least-conn",
            "HealthCheck": {"Interval": 2, "Timeout": 1, "Rise": 2, "Fall": 3},
            "ConnectTimeout": 2.5,
            "IdleTimeout": 600,
            "MaxConnections": 1000,
            "ProxyProtocol": "v2",
        },
        {
            "Name": "six-thousand",
            "Ports": [6001],
            "Targets": ["bad.target.for.testing:6003", "10.0.0.1:6001"],
        },
    ],
}
EXAMPLES = {"short": 300, "long": 5000}
EDGES = [0, -1, 65536, 70000, -0.5, 10**9, "0", "65536", "70000-70001", "", []]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["", "::", "1-65535", "0", "65536", "127.0.0.1:0", "[::1]:80", "a:b:c"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in the document a mutation can hit."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    doc = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(paths(doc)))
        action = draw(st.sampled_from(["replace", "edge", "delete", "add", "duplicate"]))
        if not where:
            if action == "replace":
                doc = draw(json_values)
            continue
        parent = doc
        for step in where[:-1]:
            parent = parent[step]
        last = where[-1]
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "edge":  # just past a bound: what a missing check lets through
            parent[last] = draw(st.sampled_from(EDGES))
        elif action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(json_values)
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(json.loads(json.dumps(parent[last])))
    return doc


def _port(value: Any) -> int:
    assert isinstance(value, int) and not isinstance(value, bool), value
    assert 1 <= value <= 65535, value
    return value


UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def _seconds(value: Any) -> None:
    """A number of seconds, or a string with a unit ("250ms", "2s", "5m", "1h"; none:
    seconds), as the README's Configuration section says."""
    if isinstance(value, str):
        text = value.strip()
        unit = next((u for u in ("ms", "s", "m", "h") if text.endswith(u)), "")
        number = text[: len(text) - len(unit)].strip()
        assert number and all(c.isdigit() or c == "." for c in number), value
        value = float(number) * UNITS.get(unit, 1)
    assert isinstance(value, int | float) and not isinstance(value, bool), value
    assert math.isfinite(value) and 0 <= value <= 366 * 86400, value


def assert_valid(doc: Any) -> None:
    """What SPEC section 3 requires of a config, checked here independently of
    config.py: a config `check` accepts (exit 0) must have all of it."""
    assert isinstance(doc, dict), doc
    apps = doc["Apps"]
    assert isinstance(apps, list) and apps, "Apps: at least one app"
    for field in ("DrainTimeout",):
        if field in doc:
            _seconds(doc[field])
    if "Workers" in doc:
        assert isinstance(doc["Workers"], int) and doc["Workers"] >= 0, doc["Workers"]  # 0: per CPU
    for a in apps:
        assert isinstance(a, dict) and isinstance(a["Name"], str) and a["Name"], a
        assert isinstance(a["Ports"], list) and a["Ports"], a
        for entry in a["Ports"]:
            if isinstance(entry, str):
                low, _, high = entry.partition("-")
                assert _port(int(low)) <= _port(int(high or low)), entry
            else:
                _port(entry)
        assert isinstance(a["Targets"], list) and a["Targets"], a
        for target in a["Targets"]:
            address = target["Address"] if isinstance(target, dict) else target
            assert isinstance(address, str), target
            _port(int(address.rpartition(":")[2]))
        for field in ("ConnectTimeout", "IdleTimeout"):
            if field in a:
                _seconds(a[field])
        for field in ("Interval", "Timeout"):
            if field in a.get("HealthCheck", {}):
                _seconds(a["HealthCheck"][field])


def check_one_line_or_valid(runner: CliRunner, path: Path, tally: Tally) -> None:
    started = time.monotonic()
    result = runner.invoke(main, ["check", str(path)])
    tally.connections += 1  # here: configs checked
    assert time.monotonic() - started < 5, "check took too long"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        tally.failures += 1
        raise AssertionError(f"{path.read_bytes()[:300]!r}: {result.exception!r}")
    if result.exit_code == 0:
        try:
            assert_valid(json.loads(path.read_bytes()))
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            tally.failures += 1
            raise AssertionError(f"exit 0 for {path.read_bytes()[:300]!r}: {exc!r}") from None
        return
    lines = result.stderr.strip().splitlines()
    ok = result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    if not ok:
        tally.failures += 1
    assert ok, (path.read_bytes()[:300], result.exit_code, result.stderr)


@pytest.mark.parametrize("variant", ["short", pytest.param("long", marks=pytest.mark.soak)])
def test_mutated_configs_give_one_line_or_valid(tmp_path: Path, tally: Tally, variant: str) -> None:
    runner = CliRunner()
    path = tmp_path / "fuzz.json"

    @settings(
        max_examples=EXAMPLES[variant],
        deadline=2000,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(mutated())
    def structural(doc: Any) -> None:
        path.write_text(json.dumps(doc))
        check_one_line_or_valid(runner, path, tally)

    structural()
    tally.note(f"{EXAMPLES[variant]} structural mutations (values, types, keys, duplicates)")


@pytest.mark.parametrize("variant", ["short", pytest.param("long", marks=pytest.mark.soak)])
def test_corrupted_config_bytes_give_one_line_or_valid(
    tmp_path: Path, tally: Tally, variant: str
) -> None:
    runner = CliRunner()
    path = tmp_path / "fuzz.json"
    text = json.dumps(VALID, indent=1).encode()

    @settings(
        max_examples=EXAMPLES[variant],
        deadline=2000,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(st.lists(st.tuples(st.integers(0, len(text) - 1), st.binary(max_size=4)), max_size=6))
    def corrupted(edits: list[tuple[int, bytes]]) -> None:
        data = bytearray(text)
        for at, replacement in edits:
            data[at : at + max(len(replacement), 1)] = replacement
        path.write_bytes(bytes(data))
        check_one_line_or_valid(runner, path, tally)

    corrupted()
    tally.note(f"{EXAMPLES[variant]} byte-level corruptions of the JSON text")


def test_every_value_set_just_past_a_bound_gives_one_line_or_valid(
    tmp_path: Path, tally: Tally
) -> None:
    """Each place in the valid config, in turn, set to each EDGES value (one change
    at a time, so nothing else masks it): a missing bound check is found every run."""
    runner = CliRunner()
    path = tmp_path / "edge.json"
    places = [where for where in paths(VALID) if where]
    for where in places:
        for value in EDGES:
            doc = json.loads(json.dumps(VALID))
            parent = doc
            for step in where[:-1]:
                parent = parent[step]
            parent[where[-1]] = value
            path.write_text(json.dumps(doc))
            check_one_line_or_valid(runner, path, tally)
    tally.note(f"{len(places)} places x {len(EDGES)} values just past a bound")
