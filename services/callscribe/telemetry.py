"""OpenTelemetry SDK setup for the process entry point: metrics exposed as Prometheus text.

Library code only uses the OpenTelemetry *API* (``metrics.get_meter("callscribe")``); without
this setup those calls are no-ops.  The global meter provider can be set once per process,
so :func:`configure_telemetry` is idempotent and returns the same registry every time.
"""

from __future__ import annotations

import threading

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from callscribe import __version__

#: bucket bounds (ms) for latency histograms: first/last package delay, decode time
LATENCY_BUCKETS_MS = (25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000,
                      30000)

_lock = threading.Lock()
_registry: CollectorRegistry | None = None


def configure_telemetry(service_name: str = "callscribe") -> CollectorRegistry:
    """Install a MeterProvider with a Prometheus reader (once); return its registry."""
    global _registry
    with _lock:
        if _registry is not None:
            return _registry
        registry = CollectorRegistry(auto_describe=True)
        reader = PrometheusMetricReader(registry=registry)
        provider = MeterProvider(
            resource=Resource.create({"service.name": service_name,
                                      "service.version": __version__}),
            metric_readers=[reader],
            views=[View(instrument_type=Histogram, instrument_unit="ms",
                        aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_MS))],
        )
        metrics.set_meter_provider(provider)
        _registry = registry
        return registry


def render_metrics() -> tuple[bytes, str]:
    """(body, content type) of the Prometheus text exposition; empty before configuration."""
    registry = _registry
    if registry is None:
        return b"# telemetry is not configured in this process\n", CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST
