"""Trace context across Kafka records and worker threads (OpenTelemetry API only).

A call's trace goes: the producer's span (``callscribe produce``: one ``produce call`` span per
call; ``serve --kafka``: the task's span) -> every audio chunk's record headers
(W3C ``traceparent``/``tracestate``) -> the worker, which runs the decodes of that channel in
the context of the latest chunk (``decode.partial``/``decode.final`` spans) and publishes
each final under a ``transcript.publish`` span -> the transcript record's headers.  With no
SDK configured (no ``CALLSCRIBE_OTLP_ENDPOINT``) every function here does nothing useful and
costs little: the no-op tracer makes invalid span contexts, which inject no headers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context

T = TypeVar("T")

#: header names the propagators use (W3C trace context and baggage)
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


def trace_headers(ctx: Context | None = None) -> list[tuple[str, bytes]]:
    """The propagation headers for ``ctx`` (default: the current context), as Kafka headers;
    empty when there is no valid span in it."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return [(k, v.encode("ascii", "replace")) for k, v in carrier.items()]


def with_trace_headers(headers: Iterable[tuple[str, bytes]],
                       ctx: Context | None = None) -> list[tuple[str, bytes]]:
    """``headers`` plus the propagation headers for ``ctx`` (replacing any stale ones)."""
    own = trace_headers(ctx)
    names = {k for k, _ in own}
    return [h for h in headers if h[0] not in names] + own


def context_from_headers(headers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None
                         ) -> Context | None:
    """The trace context a record's headers carry, or None when they carry none."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    carrier: dict[str, str] = {}
    for k, v in items:
        key = k.decode("ascii", "replace") if isinstance(k, bytes) else str(k)
        if key.lower() not in TRACE_HEADERS:
            continue
        carrier[key.lower()] = v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)
    if "traceparent" not in carrier:
        return None
    ctx = propagate.extract(carrier)
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def run_in_context(ctx: Context | None, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn`` with ``ctx`` attached: how a worker thread's spans find their parent
    (``run_in_executor`` does not carry context variables over)."""
    if ctx is None:
        return fn(*args)
    token = otel_context.attach(ctx)
    try:
        return fn(*args)
    finally:
        otel_context.detach(token)
