"""OpenTelemetry for the agent: a span per step run and per check, SQL spans beneath them.

Each agent owns its TracerProvider (tests build one with an in-memory exporter). Spans are
exported over OTLP only when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set and
the `otlp` extra is installed; OTEL_SDK_DISABLED=true turns tracing off. Trace ids are
generated either way and stored on run rows, so logs and the console can point at a trace.
"""

from __future__ import annotations

import logging
import os
import socket

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span

from pipectl import __version__

log = logging.getLogger(__name__)

TRACER_NAME = "pipectl.agent"
SERVICE_NAME = "pipectl-agent"


def tracing_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def build_provider(
    environment: str, *, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """The agent's provider, or None when OTEL_SDK_DISABLED=true."""
    if tracing_disabled():
        return None
    resource = Resource.create(
        {
            "service.name": SERVICE_NAME,
            "service.version": __version__,
            "host.name": socket.gethostname(),
            "deployment.environment.name": environment,
        }
    )
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif _otlp_configured():
        otlp = _otlp_exporter()
        if otlp is not None:
            provider.add_span_processor(BatchSpanProcessor(otlp))
    return provider


def _otlp_configured() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _otlp_exporter() -> SpanExporter | None:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed: "
            "pip install 'pipectl[otlp]'; spans are not exported"
        )
        return None
    exporter: SpanExporter = OTLPSpanExporter()
    return exporter


def instrument_sql(provider: TracerProvider | None) -> None:
    """SQL spans under run and check spans, through opentelemetry-instrumentation-asyncpg."""
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


def trace_id_of(span: Span) -> str | None:
    """Hex trace id for the run row; None for no-op spans."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}"
