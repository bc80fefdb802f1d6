"""The agent's /metrics endpoint: an HTTP server on threads of its own."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from pipectl.agent.exposition import Exposition
from pipectl.agent.metrics import AgentMetrics
from pipectl.webconfig import BasicAuth, WebConfig

log = logging.getLogger(__name__)

# Seconds a metrics client may take to shake hands or send its request.
CONNECTION_TIMEOUT = 10.0


@dataclass
class MetricsServer:
    """The /metrics endpoint on threads of its own; never touches the event loop.

    Served from agent.exposition's stored bodies when given AgentMetrics (rendered after
    changes, not per scrape); a bare registry is rendered per scrape as prometheus-client
    does. Same WSGI server for plain HTTP and with a web config (TLS, basic auth)."""

    address: str
    web: WebConfig | None = None
    httpd: Any = None
    thread: Any = None
    port: int | None = None
    exposition: Exposition | None = None

    def start(self, metrics: AgentMetrics | CollectorRegistry) -> None:
        host, _, port = self.address.rpartition(":")
        host = host.strip("[]")
        app: Any
        if isinstance(metrics, AgentMetrics):
            self.exposition = app = Exposition(metrics.registry, metrics.changes)
            self.exposition.start()
        else:
            app = make_wsgi_app(metrics)
        if self.web is not None and self.web.users:
            app = BasicAuth(app, self.web.users)
        try:
            self.httpd, self.thread = _serve(host, int(port), app, self.web)
        except BaseException:
            if self.exposition is not None:
                self.exposition.stop()
            raise
        self.port = int(self.httpd.server_port)
        scheme = "https" if self.web is not None and self.web.tls else "http"
        auth = " with basic auth" if self.web is not None and self.web.users else ""
        log.info("serving metrics on %s://%s:%d/metrics%s", scheme, host, self.port, auth)

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
        if self.exposition is not None:
            self.exposition.stop()
            self.exposition = None


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: a scrape every few seconds is not news."""

    timeout = CONNECTION_TIMEOUT  # a client that connects and says nothing frees its thread

    def log_message(self, format: str, *args: Any) -> None:
        return


def _serve(host: str, port: int, app: Any, web: WebConfig | None) -> tuple[Any, threading.Thread]:
    tls = web.ssl_context() if web is not None and web.tls else None

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def finish_request(self, request: Any, client_address: Any) -> None:
            """TLS handshakes happen here, on the connection's own thread and under its
            timeout: done in accept() (a wrapped listening socket), one client that never
            sends a ClientHello would stall every scrape and the agent's shutdown."""
            if tls is None:
                super().finish_request(request, client_address)
                return
            request.settimeout(CONNECTION_TIMEOUT)
            try:
                secure = tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.debug("TLS handshake with %s failed: %s", client_address, exc)
                return
            try:
                super().finish_request(secure, client_address)
            finally:
                secure.close()

    httpd = make_server(host, port, app, Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True)
    thread.start()
    return httpd, thread
