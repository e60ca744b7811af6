"""Prometheus metrics, read from the relay's counters at scrape time: nothing is
counted twice and the hot path does no Python work for metrics."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from itertools import accumulate
from typing import Any

from prometheus_client import ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from .. import __version__, _relay
from ..targets.routing import AppRuntime, Routes, TargetRuntime

# fastproxy_rejected_total{reason} of admission control (relay/admission.pxi), and
# the relay counter behind each. A PROXY header from a sender not in
# AcceptProxyProtocol is "untrusted-proxy" here, not a proxy protocol error: the
# sender never got to say anything.
REJECT_REASONS = (
    ("deny", "rejected_deny"),
    ("untrusted-proxy", "rejected_untrusted"),
    ("rate", "rejected_rate"),
    ("per-source-rate", "rejected_source_rate"),
    ("preface", "rejected_preface"),
)


class ProxyCollector(Collector):
    def __init__(
        self,
        routes: Routes,
        reloads: dict[str, int],
        steering_counters: Callable[[], dict[str, int] | None],
        health_checks: Callable[[], int],
        source_gauges: Callable[[], dict[str, float]] = dict,
        access_log_dropped: Callable[[], int] = lambda: 0,
        health_report: Callable[[TargetRuntime], dict[str, Any]] | None = None,
        build: dict[str, str] | None = None,
        steering_denied: Callable[[], dict[int, int]] = dict,
    ) -> None:
        self.health_report = health_report
        self.build = build or {}
        self.steering_denied = steering_denied
        self.access_log_dropped = access_log_dropped
        self.routes = routes
        self.reloads = reloads
        self.steering_counters = steering_counters
        self.health_checks = health_checks
        self.source_gauges = source_gauges

    def collect(self) -> Iterator[Metric]:
        at = ["app", "target"]
        m: dict[str, Any] = {
            "connections": CounterMetricFamily(
                "fastproxy_connections", "Connections made to a target", labels=at
            ),
            "active": GaugeMetricFamily(
                "fastproxy_active_connections", "Connections open to a target", labels=at
            ),
            "failures": CounterMetricFamily(
                "fastproxy_connect_failures", "Failed connects to a target", labels=at
            ),
            "up": GaugeMetricFamily(
                "fastproxy_target_up", "1 if the target takes new connections", labels=at
            ),
            "bytes": CounterMetricFamily(
                "fastproxy_bytes",
                "Bytes relayed; in: client to target, out: target to client",
                labels=["app", "direction"],
            ),
            "no_target": CounterMetricFamily(
                "fastproxy_no_target", "Clients closed because no target answered", labels=["app"]
            ),
            "panic": CounterMetricFamily(
                "fastproxy_panic", "Clients sent to targets while none was up", labels=["app"]
            ),
            "rejected": CounterMetricFamily(
                "fastproxy_rejected",
                "Clients closed at once, by reason: max-connections, saturated (every"
                " target at its MaxConnections, after QueueTimeout), per-source, deny"
                " (Allow / Deny), untrusted-proxy (a PROXY header from a sender not"
                " trusted), rate, per-source-rate, preface (MaxConnectionsInPreface)",
                labels=["app", "reason"],
            ),
            "proxy_errors": CounterMetricFamily(
                "fastproxy_proxy_protocol_errors",
                "Clients closed without a valid PROXY header in time",
                labels=["app"],
            ),
            "idle": CounterMetricFamily(
                "fastproxy_idle_timeouts", "Connections closed for idleness", labels=["app"]
            ),
            "closed": CounterMetricFamily(
                "fastproxy_closed",
                "Connections the proxy closed on its own initiative, by reason:"
                " max-duration (MaxConnectionDuration), target-down (OnTargetDown close)",
                labels=["app", "reason"],
            ),
            "saturated": CounterMetricFamily(
                "fastproxy_target_saturated",
                "New clients that passed a target over because it was at its MaxConnections"
                " (limit=hard) or SoftLimit (limit=soft)",
                labels=["app", "target", "limit"],
            ),
            "limit": GaugeMetricFamily(
                "fastproxy_target_limit",
                "A target's configured MaxConnections (limit=hard) and SoftLimit (limit=soft)",
                labels=["app", "target", "limit"],
            ),
            "outlier_failures": CounterMetricFamily(
                "fastproxy_outlier_failures",
                "Failures outlier detection counts: failed connects and resets before the"
                " target's first byte",
                labels=at,
            ),
            "ejections": CounterMetricFamily(
                "fastproxy_outlier_ejections", "Times a target was ejected", labels=at
            ),
            "ejected": GaugeMetricFamily(
                "fastproxy_target_ejected", "1 while the target is ejected", labels=at
            ),
            "queued": CounterMetricFamily(
                "fastproxy_queued",
                "Clients that waited (QueueTimeout) because every target was at its MaxConnections",
                labels=["app"],
            ),
            "accepted": CounterMetricFamily(
                "fastproxy_clients", "Client connections accepted", labels=["app"]
            ),
            "local": CounterMetricFamily(
                "fastproxy_local_errors",
                "Clients closed for a local shortage (descriptors, ports, memory)",
                labels=["app"],
            ),
            "connect": HistogramMetricFamily(
                "fastproxy_connect_seconds",
                "Time from connect() to an established connection, per target"
                " (sum by app for an app's)",
                labels=at,
            ),
            "checks": CounterMetricFamily(
                "fastproxy_health_check_results",
                "Active health checks of a target by result",
                labels=["app", "target", "result"],
            ),
            "check_ok": GaugeMetricFamily(
                "fastproxy_health_check_ok",
                "1 if the target's last active health check passed, 0 if it failed",
                labels=at,
            ),
        }
        bounds = [f"{b:g}" for b in _relay.CONNECT_BUCKETS] + ["+Inf"]
        with self.routes.lock:
            apps = list(self.routes.apps.values())
        sni_unmatched = sni_errors = 0
        denied = self.steering_denied()  # by the sk_lookup program, per app id
        for app in apps:
            name = app.app.name
            stats = self.routes.stats(app.slot)
            m["bytes"].add_metric([name, "in"], stats["bytes_in"])
            m["bytes"].add_metric([name, "out"], stats["bytes_out"])
            m["no_target"].add_metric([name], stats["no_target"])
            m["panic"].add_metric([name], stats["panic"])
            m["rejected"].add_metric([name, "max-connections"], stats["rejected"])
            m["rejected"].add_metric([name, "per-source"], stats["rejected_per_source"])
            stats["rejected_deny"] += denied.get(app.app_id, 0)
            for reason, key in REJECT_REASONS:
                m["rejected"].add_metric([name, reason], stats[key])
            m["proxy_errors"].add_metric([name], stats["proxy_errors"])
            sni_unmatched += stats["sni_unmatched"]
            sni_errors += stats["sni_errors"]
            m["idle"].add_metric([name], stats["idle_timeouts"])
            m["closed"].add_metric([name, "max-duration"], stats["closed_max_duration"])
            m["closed"].add_metric([name, "target-down"], stats["closed_target_down"])
            m["queued"].add_metric([name], stats["queued"])
            m["rejected"].add_metric([name, "saturated"], stats["rejected_saturated"])
            m["accepted"].add_metric([name], stats["connections"])
            m["local"].add_metric([name], stats["local_errors"])
            for target in app.targets:
                labels = [name, target.target.address]
                tstats = self.routes.stats(target.slot)
                m["connections"].add_metric(labels, tstats["connections"])
                m["active"].add_metric(labels, tstats["active"])
                m["failures"].add_metric(labels, tstats["connect_failures"])
                if app.app.outlier is not None:
                    m["outlier_failures"].add_metric(labels, tstats["outlier_failures"])
                    m["ejections"].add_metric(labels, target.ejections)
                    m["ejected"].add_metric(labels, 1 if target.ejected_until else 0)
                for limit, configured in (
                    ("hard", target.target.max_connections),
                    ("soft", target.target.soft_limit),
                ):
                    if configured:
                        m["saturated"].add_metric([*labels, limit], tstats[f"saturated_{limit}"])
                        m["limit"].add_metric([*labels, limit], configured)
                m["up"].add_metric(labels, 1 if target.state == "up" else 0)
                counts, total = self.routes.relay.connect_times(target.slot)
                m["connect"].add_metric(labels, list(zip(bounds, accumulate(counts))), total)
                if self.health_report is not None:
                    report = self.health_report(target)
                    m["checks"].add_metric([*labels, "passed"], report["checks_passed"])
                    m["checks"].add_metric([*labels, "failed"], report["checks_failed"])
                    if report["last_check"] is not None:
                        m["check_ok"].add_metric(labels, 1 if report["last_check"]["ok"] else 0)
        yield from m.values()
        yield from tls_metrics(self.routes, apps)
        yield InfoMetricFamily(
            "fastproxy_build",
            "The running fastproxy",
            value={
                "version": __version__,
                "python": ".".join(map(str, sys.version_info[:3])),
                **self.build,
            },
        )
        yield CounterMetricFamily(
            "fastproxy_sni_unmatched",
            "TLS clients closed: no app has their server name and the port has no default",
            value=sni_unmatched,
        )
        yield CounterMetricFamily(
            "fastproxy_sni_errors",
            "TLS clients closed: malformed, truncated or late ClientHello",
            value=sni_errors,
        )
        yield CounterMetricFamily(
            "fastproxy_access_log_dropped",
            "Access log lines lost (ring full, or the destination could not take them)",
            value=self.access_log_dropped(),
        )

        reloads = CounterMetricFamily(
            "fastproxy_reloads", "Configuration reloads", labels=["result"]
        )
        for result in ("success", "failure"):
            reloads.add_metric([result], self.reloads.get(result, 0))
        yield reloads
        yield CounterMetricFamily(
            "fastproxy_health_checks", "Active health checks done", value=self.health_checks()
        )
        source_help = {
            "config_revision": "etcd revision of the config being served",
            "config_source_up": "1 while the config source (etcd) answers",
        }
        for key, value in self.source_gauges().items():
            yield GaugeMetricFamily(f"fastproxy_{key}", source_help[key], value=value)
        steering = self.steering_counters()
        if steering is not None:
            for key, text in (
                ("lookups", "Socket lookups seen by the sk_lookup program"),
                ("steered", "Connections steered to the proxy's socket"),
                ("misses", "Lookups for ports not configured (passed on)"),
                ("errors", "Lookups that could not be steered"),
                ("denied", "Connections refused by Allow / Deny (dropped)"),
            ):
                yield CounterMetricFamily(
                    f"fastproxy_steering_{key}", text, value=steering.get(key, 0)
                )


# fastproxy_tls_handshakes_total{result}: client handshakes done ("ok"), or failed by
# reason, and the relay counter behind each (relay/tls.pxi).
TLS_RESULTS = (
    ("ok", "tls_handshakes"),
    ("timeout", "tls_timeouts"),
    ("error", "tls_errors"),
    ("closed", "tls_closed"),
    ("target-error", "tls_target_errors"),
)


def tls_metrics(routes: Routes, apps: list[AppRuntime]) -> Iterator[Metric]:
    """Handshakes by result, resumptions, and when each certificate in force expires."""
    handshakes = CounterMetricFamily(
        "fastproxy_tls_handshakes",
        "TLS handshakes by result: ok, timeout, error (not TLS, nothing in common, a bad"
        " client certificate), closed (the client left), target-error (reencrypt)",
        labels=["app", "result"],
    )
    resumed = CounterMetricFamily(
        "fastproxy_tls_resumed",
        "TLS handshakes that resumed a session (a ticket), of the ok ones",
        labels=["app"],
    )
    expiry = GaugeMetricFamily(
        "fastproxy_tls_certificate_expiry_seconds",
        "When a certificate in force expires (its notAfter), Unix time",
        labels=["app", "name"],
    )
    ktls = CounterMetricFamily(
        "fastproxy_tls_ktls",
        "TLS client connections whose kernel took the record layer (kTLS), either way",
        labels=["app"],
    )
    for app in apps:
        if app.app.tls is None:
            continue
        name = app.app.name
        stats = routes.stats(app.slot)
        ktls.add_metric([name], stats["tls_ktls"])
        for result, key in TLS_RESULTS:
            handshakes.add_metric([name, result], stats[key])
        resumed.add_metric([name], stats["tls_resumed"])
        context = routes.tls.get(name)
        for cert_name, not_after in context.certificates if context is not None else ():
            expiry.add_metric([name, cert_name], not_after)
    yield handshakes
    yield resumed
    yield ktls
    yield expiry


def make_registry(collector: ProxyCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)  # CPU, memory, descriptors of this process
    return registry
