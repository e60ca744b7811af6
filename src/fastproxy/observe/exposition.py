"""/metrics in the Prometheus text format, written here rather than by
prometheus_client's generate_latest.

generate_latest checks and escapes the name of every sample and of every label of
every sample (names may be UTF-8 since 0.22): about 15 µs a sample, so 220 ms for the
14,000 samples of 500 targets, with the GIL held all along; a scrape every 15 s took
that from the health checks and the main loop. Our metric and label names are fixed
identifiers, so only label values need escaping. The bytes are the same as
generate_latest's (tests/test_metrics_exposition.py compares them on a real proxy's
metrics); a name that is not a plain identifier is refused rather than written
differently."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from prometheus_client.registry import Collector
    from prometheus_client.samples import Sample

# The format written: 0.0.4, the one every Prometheus reads (prometheus_client's
# CONTENT_TYPE_LATEST says 1.0.0 since 0.22, for the same bytes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
# What the text format calls the types generate_latest turns OpenMetrics ones into.
_TYPE = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}
_SUFFIX = {"counter": "_total", "info": "_info"}
# Samples OpenMetrics allows inside a family and the text format does not: each goes
# to a gauge of its own after the family, as generate_latest puts them.
_SEPARATE = ("_created", "_gsum", "_gcount")


def render(registry: Collector) -> bytes:
    out: list[str] = []
    for metric in registry.collect():
        name = _checked(metric.name) + _SUFFIX.get(metric.type, "")
        help_text = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        kind = _TYPE.get(metric.type, metric.type)
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
        separate: dict[str, list[str]] = {}
        apart = {metric.name + suffix: suffix for suffix in _SEPARATE}
        for sample in metric.samples:
            suffix = apart.get(sample.name)
            if suffix is None:
                out.append(_line(sample))
            else:
                separate.setdefault(suffix, []).append(_line(sample))
        for suffix, lines in sorted(separate.items()):
            out.append(f"# HELP {metric.name}{suffix} {help_text}\n")
            out.append(f"# TYPE {metric.name}{suffix} gauge\n")
            out.extend(lines)
    return "".join(out).encode()


def _line(sample: Sample) -> str:
    value = floatToGoString(sample.value)
    stamp = "" if sample.timestamp is None else f" {int(float(sample.timestamp) * 1000):d}"
    name = _checked(sample.name)
    if not sample.labels:
        return f"{name} {value}{stamp}\n"
    return f"{name}{{{_labels(sorted(sample.labels.items()))}}} {value}{stamp}\n"


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{_checked(key, _LABEL)}="{_escaped(value)}"' for key, value in pairs)


def _escaped(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


_checked_already: dict[re.Pattern[str], set[str]] = {_NAME: set(), _LABEL: set()}


def _checked(name: str, pattern: re.Pattern[str] = _NAME) -> str:
    """`name` if it is a plain identifier (each is checked once): generate_latest would
    escape any other, and we would not write the same bytes."""
    known = _checked_already[pattern]
    if name not in known:
        if not pattern.match(name):
            raise ValueError(f"metric or label name {name!r} is not a plain identifier")
        known.add(name)
    return name
