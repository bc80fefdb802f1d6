"""OpenTelemetry for the agent: a span per request, step run (its attempts beneath it) and
check, SQL spans beneath them.

Each agent owns its TracerProvider (tests build one with an in-memory exporter), configured
by the standard OTEL_* environment (pipectl.telemetry). Trace ids are generated whatever
the exporters and stored on run and result rows, so logs and the console can point at a
trace; SQL outside any of those spans (heartbeats, claims, pool resets) starts no trace.
"""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

from pipectl import __version__, telemetry
from pipectl.telemetry import trace_id_of, tracing_disabled

log = logging.getLogger(__name__)

TRACER_NAME = "pipectl.agent"
SERVICE_NAME = "pipectl-agent"

__all__ = [
    "SERVICE_NAME",
    "TRACER_NAME",
    "build_provider",
    "instrument_sql",
    "trace_id_of",
    "tracer_for",
    "tracing_disabled",
]


def build_provider(
    environment: str, *, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """The agent's provider, or None when OTEL_SDK_DISABLED=true. Raises
    telemetry.TelemetryError when the environment asks for what cannot be done."""
    built = telemetry.build(SERVICE_NAME, environment, exporter=exporter)
    return built.provider if built is not None else None


def instrument_sql(provider: TracerProvider | None) -> None:
    """SQL spans under request, run and check spans, through
    opentelemetry-instrumentation-asyncpg."""
    if provider is None:
        return
    try:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    except ImportError:  # pragma: no cover - a declared dependency
        log.warning("opentelemetry-instrumentation-asyncpg missing: no SQL spans")
        return
    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)


def tracer_for(provider: TracerProvider | None) -> trace.Tracer:
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer(TRACER_NAME, __version__)
