"""/metrics bodies rendered once per change of the metrics, not once per scrape.

prometheus-client renders the whole registry on every scrape: about 5 µs a sample, 14 ms for
the 2,600 samples of 50 steps and 200 checks, all of it holding the GIL the agent's event loop
needs. The agent's metrics change only when a run, check or request finishes (seconds to
minutes apart), so the body is rendered on a thread of its own shortly after a change and
scrapes are answered with the stored bytes. Every update goes through AgentMetrics, which
bumps `Changes`; a scrape that finds the stored body older than the latest change renders it
there and then, so a scrape never returns a value older than the update before it.

The process's own figures (`process_*`, `python_*`: CPU seconds, memory, open files, garbage
collections) change all the time without any update: they live in a small registry of their
own (`live`), rendered at every scrape (about 20 samples) and appended to the stored body. With
gzip, the stored body and the fresh part are two gzip members of one stream (RFC 1952 allows
any number; Prometheus, Python and curl read them as one body).
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

Encoder = Callable[[CollectorRegistry], bytes]
# (content type, gzipped): the variants Prometheus and people ask for.
Variant = tuple[str, bool]
StartResponse = Callable[[str, list[tuple[str, str]]], Any]

_EOF = b"# EOF\n"  # the last line of an OpenMetrics body

# Pre-rendering waits this long after a change (updates come in bursts: a run finishing
# updates several series) and renders at most this often while changes keep coming.
SETTLE_SECONDS = 0.2
MIN_INTERVAL_SECONDS = 1.0


class Changes:
    """A generation number bumped on every metrics update, and an event the pre-rendering
    thread waits on. Bumped from the event loop's thread and from the metrics server's
    (its own refusals), hence the lock: `+=` is not atomic across threads."""

    def __init__(self) -> None:
        self.generation = 0
        self.event = threading.Event()
        self._lock = threading.Lock()

    def bump(self) -> None:
        with self._lock:
            self.generation += 1
        self.event.set()


class Exposition:
    """The registry's exposition, stored per variant and rendered again after changes."""

    def __init__(
        self,
        registry: CollectorRegistry,
        changes: Changes,
        *,
        live: CollectorRegistry | None = None,
        settle: float = SETTLE_SECONDS,
        min_interval: float = MIN_INTERVAL_SECONDS,
    ) -> None:
        self.registry = registry
        self.live = live
        self.changes = changes
        self.settle = settle
        self.min_interval = min_interval
        self.renders = 0  # how many times the registry was rendered (tests, benchmarks)
        self._lock = threading.Lock()
        # Per variant: (generation, stored body without its OpenMetrics EOF, whether it had one)
        self._bodies: dict[Variant, tuple[int, bytes, bool]] = {}
        self._encoders: dict[Variant, Encoder] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        both = CollectorRegistry(auto_describe=False)
        both.register(_Together(registry, live))
        self._uncached = make_wsgi_app(both)

    # ---------------------------------------------------------------- bodies

    def body(self, accept: str | None, accept_encoding: str | None) -> tuple[Variant, bytes]:
        encoder, content_type = choose_encoder(accept or "")
        variant = (content_type, gzip_accepted(accept_encoding or ""))
        return variant, self._current(variant, encoder)

    def _current(self, variant: Variant, encoder: Encoder) -> bytes:
        body, eof = self._stored(variant, encoder)
        # The live part ends with the EOF line in OpenMetrics, as the stored body did.
        tail = encoder(self.live) if self.live is not None else (_EOF if eof else b"")
        if variant[1] and tail:
            tail = gzip.compress(tail, compresslevel=6)
        return body + tail

    def _stored(self, variant: Variant, encoder: Encoder) -> tuple[bytes, bool]:
        with self._lock:
            self._encoders[variant] = encoder
            generation = self.changes.generation  # read first: a change while rendering
            stored = self._bodies.get(variant)  # leaves the body stale, never wrongly fresh
            if stored is not None and stored[0] == generation:
                return stored[1], stored[2]
            output = encoder(self.registry)
            eof = output.endswith(_EOF)
            if eof:
                output = output[: -len(_EOF)]
            if variant[1]:
                output = gzip.compress(output, compresslevel=6)
            self.renders += 1
            self._bodies[variant] = (generation, output, eof)
            return output, eof

    def _render_known_variants(self) -> None:
        with self._lock:
            variants = list(self._encoders.items())
        for variant, encoder in variants:
            self._stored(variant, encoder)

    # ---------------------------------------------------------------- pre-rendering

    def start(self) -> None:
        self._thread = threading.Thread(target=self._prerender, name="metrics-render", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.changes.event.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _prerender(self) -> None:
        """After each burst of changes, render the variants scrapes have asked for."""
        while not self._stopping.is_set():
            self.changes.event.wait()
            if self._stopping.wait(self.settle):
                return
            self.changes.event.clear()
            started = time.monotonic()
            try:
                self._render_known_variants()
            except Exception:  # scrapes render for themselves meanwhile; try again later
                log.exception("pre-rendering the metrics failed")
            if self._stopping.wait(max(0.0, self.min_interval - (time.monotonic() - started))):
                return

    # ---------------------------------------------------------------- WSGI

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """GET of the metrics from the stored bodies; everything else (OPTIONS, other
        methods, favicon, name[] filters) as prometheus-client answers it."""
        if (
            environ.get("REQUEST_METHOD") != "GET"
            or environ.get("PATH_INFO") == "/favicon.ico"
            or "name[]" in parse_qs(environ.get("QUERY_STRING", ""))
        ):
            result: Iterable[bytes] = self._uncached(environ, start_response)
            return result
        (content_type, gzipped), output = self.body(
            environ.get("HTTP_ACCEPT"), environ.get("HTTP_ACCEPT_ENCODING")
        )
        headers = [("Content-Type", content_type), ("Content-Length", str(len(output)))]
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [output]


class _Together(Collector):
    """The stored registry and the live one as one, for the requests rendered per scrape."""

    def __init__(self, registry: CollectorRegistry, live: CollectorRegistry | None) -> None:
        self.registries = [registry] if live is None else [registry, live]

    def collect(self) -> Iterable[Any]:
        for registry in self.registries:
            yield from registry.collect()

    def describe(self) -> Iterable[Any]:
        """The names, for name[] filters (every family is there from the start)."""
        return self.collect()
