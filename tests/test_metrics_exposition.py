"""/metrics is written by observe/exposition.py, not by prometheus_client's
generate_latest (220 ms for 500 targets, GIL held): the bytes must stay the same, for
the metrics of a real relay that carried traffic and for every kind of family and
awkward label value the format knows."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from prometheus_client import ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from fastproxy import _relay
from fastproxy.backends import NamedEchoServer
from fastproxy.config import App, Config, Target
from fastproxy.observe.exposition import render
from fastproxy.observe.metrics import ProxyCollector, make_registry
from fastproxy.targets.routing import Routes
from servers import talk


class Frozen:
    """One collection, served to both writers: the process collector's figures (CPU,
    memory) change between two collections."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def test_a_real_relays_metrics_are_written_byte_for_byte_as_generate_latest_would() -> None:
    backends = [NamedEchoServer(f"b{i}") for i in range(3)]
    relay = _relay.Relay(workers=1)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    relay.add_listener(listener.fileno(), port)
    relay.start()
    try:
        routes = Routes(relay)
        config = Config(
            apps=(
                App("web", (port,), tuple(Target("127.0.0.1", b.port) for b in backends[:2])),
                App("db", (port + 1,), (Target("127.0.0.1", backends[2].port),)),
            )
        )
        routes.apply(config, {"127.0.0.1": (socket.AF_INET, "127.0.0.1")})
        answers = {talk(port, b"x").split(b"\n")[0] for _ in range(6)}
        assert answers == {b"b0", b"b1"}  # the traffic really crossed the relay
        collector = ProxyCollector(
            routes,
            {"success": 1, "failure": 0},
            lambda: None,
            lambda: 0,
            build={"steering": "ports", "relay": "splice"},
        )
        metrics = list(make_registry(collector).collect())
    finally:
        relay.stop()
        listener.close()
        for backend in backends:
            backend.close()
    frozen = Frozen(metrics)
    ours = render(frozen)
    assert b'fastproxy_connections_total{app="web",target="127.0.0.1:' in ours
    assert b"fastproxy_connect_seconds_bucket{" in ours and b"process_open_fds " in ours
    assert ours == generate_latest(frozen)  # type: ignore[arg-type]


def every_kind() -> list[Metric]:
    counter = CounterMetricFamily("c", 'help with \\ and\nnewline "quoted"', labels=["a", "b"])
    counter.add_metric(['back\\slash "quote"', "new\nline"], 3)
    counter.add_metric(["plain", "é ünïcode"], 2.5, created=1700000000.25)
    gauge = GaugeMetricFamily("g", "a gauge", labels=["z", "a"])  # labels are sorted
    gauge.add_metric(["1", "2"], float("inf"))
    gauge.add_metric(["3", "4"], float("-inf"))
    gauge.add_metric(["5", "6"], 12345678901.0, timestamp=1700000000.5)
    unlabelled = GaugeMetricFamily("u", "no labels", value=float("nan"))
    histogram = HistogramMetricFamily("h", "a histogram", labels=["app"])
    histogram.add_metric(["x"], [("0.001", 1), ("0.1", 3), ("+Inf", 4)], sum_value=0.25)
    info = InfoMetricFamily("i", "build", value={"version": "1.2.3", "relay": "splice"})
    return [counter, gauge, unlabelled, histogram, info]


def test_every_family_kind_and_awkward_label_value_as_generate_latest() -> None:
    frozen = Frozen(every_kind())
    assert render(frozen) == generate_latest(frozen)  # type: ignore[arg-type]


def test_a_name_the_text_format_would_escape_is_refused_not_written_differently() -> None:
    odd = GaugeMetricFamily("fastproxy_odd", "x", labels=["bad-label"])
    odd.add_metric(["v"], 1)
    with pytest.raises(ValueError, match="bad-label"):
        render(Frozen([odd]))


def test_the_process_collector_alone() -> None:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    frozen = Frozen(list(registry.collect()))
    assert render(frozen) == generate_latest(frozen)  # type: ignore[arg-type]
