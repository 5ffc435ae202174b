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
#: Kafka hops (``callscribe.kafka.hop.*``) take milliseconds: 1 ms resolution where they fall
HOP_BUCKETS_MS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40, 50, 75, 100, 250, 500,
                  1000, 5000)

_lock = threading.Lock()
_registry: CollectorRegistry | None = None


def configure_tracing(service_name: str, otlp_endpoint: str | None) -> bool:
    """Install a TracerProvider exporting over OTLP/HTTP when an endpoint is configured
    (``CALLSCRIBE_OTLP_ENDPOINT``, e.g. ``http://otel-collector:4318``); none otherwise, and
    the tracing API calls in library code stay no-ops.  Returns whether tracing is on."""
    if not otlp_endpoint:
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name,
                                                        "service.version": __version__}))
    endpoint = otlp_endpoint.rstrip("/")
    if not endpoint.endswith("/v1/traces"):
        endpoint += "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint,
                                                                    timeout=5)))
    trace.set_tracer_provider(provider)
    return True


def configure_telemetry(service_name: str = "callscribe",
                        otlp_endpoint: str | None = None) -> CollectorRegistry:
    """Install a MeterProvider with a Prometheus reader (once) and, when an OTLP endpoint is
    given, a tracer provider; return the Prometheus registry."""
    global _registry
    with _lock:
        if _registry is not None:
            return _registry
        configure_tracing(service_name, otlp_endpoint)
        registry = CollectorRegistry(auto_describe=True)
        reader = PrometheusMetricReader(registry=registry)
        provider = MeterProvider(
            resource=Resource.create({"service.name": service_name,
                                      "service.version": __version__}),
            metric_readers=[reader],
            views=[View(instrument_type=Histogram, instrument_unit="ms",
                        instrument_name="callscribe.[!k]*",  # all but callscribe.kafka.*
                        aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_MS)),
                   View(instrument_type=Histogram, instrument_unit="ms",
                        instrument_name="callscribe.kafka.hop.*",
                        aggregation=ExplicitBucketHistogramAggregation(HOP_BUCKETS_MS))],
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
