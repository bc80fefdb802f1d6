"""OpenTelemetry for the agent: spans per step run and per check.

Without a configured provider the API hands out no-op spans, so the engine can always
instrument; `setup_tracing` installs the real provider when the agent starts.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import Span

from pipectl import __version__

TRACER_NAME = "pipectl.agent"


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME, __version__)


def trace_id_of(span: Span) -> str | None:
    """Hex trace id for the run row; None for no-op spans."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}"
