"""OpenTelemetry for every pipectl process, configured by the standard environment.

- `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`: override the resource pipectl sets
  (service.name of the process, service.version, host.name, deployment.environment.name).
- `OTEL_TRACES_EXPORTER`: a comma-separated list of `otlp`, `console`, `none` (or any
  exporter installed under the SDK's `opentelemetry_traces_exporter` entry points). Unset:
  `otlp` when an OTLP endpoint variable is set, else `none` (an agent without a collector
  must not retry a connection to localhost:4318 forever).
- `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`
  (the default; the `otlp` extra) or `grpc` (the `otlp-grpc` extra). The exporters read
  their own endpoint, headers, timeout, compression and certificate variables.
- `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (the SDK's own reading), under
  `NoHousekeeping`; `OTEL_BSP_*` for the batch processor; `OTEL_SDK_DISABLED=true` turns
  tracing off.

A configuration that cannot be honoured (an unknown exporter, gRPC without its extra) raises
`TelemetryError`, naming the variable and what to install: the CLI exits 2 with it and the
agent refuses to start, rather than running without the traces the operator asked for.

Trace ids are generated whatever the exporters: runs, results and log lines carry them.
A request is one trace: whoever files it stores `traceparent_of(span)` with the row, and
the agent continues it (`context_from`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import EllipsisType
from typing import Any, TextIO

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_SDK_DISABLED,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from pipectl import __version__

log = logging.getLogger(__name__)

EXPORTER_GROUP = "opentelemetry_traces_exporter"
# OTLP protocol -> (exporter entry point, the pipectl extra that installs it).
OTLP_EXPORTERS = {
    "http/protobuf": ("otlp_proto_http", "otlp"),
    "grpc": ("otlp_proto_grpc", "otlp-grpc"),
}
DEFAULT_PROTOCOL = "http/protobuf"
_PROPAGATOR = TraceContextTextMapPropagator()


class TelemetryError(Exception):
    """The OpenTelemetry environment asks for something that cannot be done; says which
    variable and what to do."""


def tracing_disabled() -> bool:
    return os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"


# ------------------------------------------------------------------------------- resource


def resource(service: str, environment: str | None = None) -> Resource:
    """pipectl's resource, with OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME on top (the
    SDK's own detector reads them: the environment wins over pipectl's defaults)."""
    defaults: dict[str, str] = {
        "service.name": service,
        "service.version": __version__,
        "host.name": socket.gethostname(),
    }
    if environment:
        defaults["deployment.environment.name"] = environment
    return Resource.create(defaults).merge(OTELResourceDetector().detect())


# ------------------------------------------------------------------------------- exporters


@dataclass(frozen=True)
class ExporterChoice:
    """One exporter the environment asks for: its entry point name and where it came from."""

    name: str
    variable: str
    value: str
    extra: str | None = None


def exporter_choices(env: Mapping[str, str] | None = None) -> list[ExporterChoice]:
    """What OTEL_TRACES_EXPORTER (and the OTLP protocol variables) ask for."""
    env = os.environ if env is None else env
    raw = env.get(OTEL_TRACES_EXPORTER, "").strip()
    if not raw:
        endpoint = env.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or env.get(
            OTEL_EXPORTER_OTLP_ENDPOINT
        )
        raw = "otlp" if endpoint else "none"
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    if "none" in names:
        if len(names) > 1:
            raise TelemetryError(
                f"{OTEL_TRACES_EXPORTER}={raw!r}: 'none' cannot be combined with other exporters"
            )
        return []
    choices: list[ExporterChoice] = []
    for name in dict.fromkeys(names):
        if name == "otlp":
            variable = (
                OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
                if env.get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "").strip()
                else OTEL_EXPORTER_OTLP_PROTOCOL
            )
            protocol = env.get(variable, "").strip().lower() or DEFAULT_PROTOCOL
            if protocol not in OTLP_EXPORTERS:
                raise TelemetryError(
                    f"{variable}={protocol!r}: pipectl exports OTLP as "
                    + " or ".join(repr(p) for p in OTLP_EXPORTERS)
                )
            entry, extra = OTLP_EXPORTERS[protocol]
            choices.append(ExporterChoice(entry, variable, protocol, extra))
        else:
            choices.append(ExporterChoice(name, OTEL_TRACES_EXPORTER, raw))
    return choices


def _load_exporter(choice: ExporterChoice, console: TextIO | None) -> SpanExporter | None:
    if choice.name == "console":
        # Spans as JSON on `console` (the agent: stdout; the CLI: stderr, so that --json
        # output stays parseable; the full-screen console: nowhere).
        if console is None:
            return None
        return ConsoleSpanExporter(out=console)
    found = {ep.name: ep for ep in entry_points(group=EXPORTER_GROUP)}
    entry = found.get(choice.name)
    if entry is None:
        if choice.extra is not None:
            raise TelemetryError(
                f"{choice.variable}={choice.value!r} needs the OTLP exporter for it, which is "
                f"not installed: pip install 'pipectl[{choice.extra}]'"
            )
        known = ", ".join(sorted({"otlp", "console", "none", *found})) or "none"
        raise TelemetryError(
            f"{OTEL_TRACES_EXPORTER}: no trace exporter named {choice.name!r} is installed"
            f" (known: {known})"
        )
    try:
        exporter_class = entry.load()
        exporter = exporter_class()
    except ImportError as exc:
        hint = f": pip install 'pipectl[{choice.extra}]'" if choice.extra else ""
        raise TelemetryError(
            f"{choice.variable}={choice.value!r}: the exporter cannot be loaded ({exc}){hint}"
        ) from exc
    if not isinstance(exporter, SpanExporter):
        raise TelemetryError(f"{OTEL_TRACES_EXPORTER}: {choice.name!r} is not a span exporter")
    return exporter


# ------------------------------------------------------------------------------- sampling


class NoHousekeeping(sampling.Sampler):
    """Drops SQL spans that would start a trace: heartbeats, claims, pool resets, NOTIFY
    bookkeeping. SQL inside a step, a check or a request is a child and kept; everything
    else goes to `delegate` (the SDK's choice from OTEL_TRACES_SAMPLER, parent-based)."""

    def __init__(self, delegate: sampling.Sampler | None = None) -> None:
        # The SDK's reading of OTEL_TRACES_SAMPLER (ParentBased(AlwaysOn) by default).
        self.delegate = delegate or TracerProvider(shutdown_on_exit=False).sampler

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> sampling.SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid and _is_sql(kind, attributes):
            return sampling.SamplingResult(sampling.Decision.DROP)
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"NoHousekeeping{{{self.delegate.get_description()}}}"


def _is_sql(kind: SpanKind | None, attributes: Attributes) -> bool:
    """A database client span (the asyncpg instrumentation sets db.system before the span
    starts, so that samplers can tell)."""
    if kind != SpanKind.CLIENT or not attributes:
        return False
    return "db.system" in attributes or "db.system.name" in attributes


# ------------------------------------------------------------------------------- providers


@dataclass(frozen=True)
class Telemetry:
    """A process's provider and whether anything leaves the process."""

    provider: TracerProvider
    exporting: bool

    def tracer(self, name: str) -> trace.Tracer:
        return self.provider.get_tracer(name, __version__)

    def shutdown(self) -> None:
        self.provider.shutdown()


def build(
    service: str,
    environment: str | None = None,
    *,
    exporter: SpanExporter | None = None,
    console: TextIO | EllipsisType | None = ...,
) -> Telemetry | None:
    """The provider for one process (None when OTEL_SDK_DISABLED=true). `exporter` replaces
    the environment's exporters (tests); `console` is where the `console` exporter writes
    (default: sys.stdout as it is now; None: nowhere). Raises TelemetryError when the
    environment asks for what cannot be done."""
    if tracing_disabled():
        return None
    if isinstance(console, EllipsisType):
        console = sys.stdout
    exporters: list[tuple[SpanExporter, bool]] = []
    if exporter is not None:
        exporters.append((exporter, True))
    else:
        for choice in exporter_choices():
            loaded = _load_exporter(choice, console)
            if loaded is not None:
                exporters.append((loaded, choice.name == "console"))
    provider = TracerProvider(
        sampler=NoHousekeeping(), resource=resource(service, environment), shutdown_on_exit=False
    )
    for span_exporter, at_once in exporters:
        # The console exporter and tests' exporters see each span as it ends; OTLP batches.
        processor: Any = SimpleSpanProcessor if at_once else BatchSpanProcessor
        provider.add_span_processor(processor(span_exporter))
    return Telemetry(provider, exporting=bool(exporters))


# ------------------------------------------------------------------------------- context


def trace_id_of(span: Span) -> str | None:
    """Hex trace id (run rows, result rows, logs); None for no-op spans."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}"


def traceparent_of(span: Span) -> str | None:
    """The W3C traceparent of `span`, as stored with a request; None for no-op spans."""
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> Context | None:
    """The context to continue a stored traceparent in; None (a new trace) when there is
    none or it is malformed (whoever may file a request chooses it)."""
    if not traceparent:
        return None
    context = _PROPAGATOR.extract({"traceparent": traceparent})
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


@contextmanager
def filing_span(
    telemetry: Telemetry | None, kind: str, target: str
) -> Iterator[tuple[Span, str | None]]:
    """The span of filing a request, and the traceparent to store with it: None when no
    span of this process is exported (the agent's own span then starts the trace, rather
    than pointing at a parent no backend ever received)."""
    tracer = telemetry.tracer("pipectl") if telemetry is not None else trace.NoOpTracer()
    with tracer.start_as_current_span(
        f"file request {kind}",
        kind=SpanKind.PRODUCER,
        attributes={"pipectl.request.kind": kind, "pipectl.request.target": target},
    ) as span:
        exported = telemetry is not None and telemetry.exporting
        yield span, traceparent_of(span) if exported else None
