"""The agent process: signals, systemd, metrics endpoint, reconnecting start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

import pipectl.checks  # noqa: F401  (registers the check kinds, so a reload parses them)
from pipectl.agent.exposition import Exposition
from pipectl.agent.metrics import AgentMetrics
from pipectl.agent.service import Agent
from pipectl.agent.systemd import notify, watchdog_interval, watchdog_loop
from pipectl.agent.tracing import build_provider, instrument_sql
from pipectl.config import ConfigError, LoadedConfig, load_config
from pipectl.db import DatabaseUnavailable, is_transient
from pipectl.migrate import MigrationError
from pipectl.webconfig import BasicAuth, WebConfig, load_web_config

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


@dataclass
class AgentProcess:
    """Owns one Agent for the life of the process (reload swaps its config, not the agent)."""

    loaded: LoadedConfig
    config_path: str | None = None
    metrics_address: str | None = None
    name: str | None = None
    agent: Agent | None = None
    metrics: MetricsServer | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _reload: asyncio.Event = field(default_factory=asyncio.Event)
    _provider: TracerProvider | None = None

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT. Exit 0 on a clean stop, 2 on a config problem."""
        self._install_signals()
        agent = await self._start_with_retry()
        if agent is None:
            return 0 if self._stop.is_set() else 2
        address = self.metrics_address or agent.config.agent.metrics_address
        if address:
            web_file = agent.config.agent.metrics_web_config
            try:
                web = load_web_config(self.loaded.resolve(web_file)) if web_file else None
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("cannot start: %s", problem)
                await agent.stop()
                return 2
            self.metrics = MetricsServer(address, web)
            try:
                self.metrics.start(agent.metrics)
            except (OSError, ssl.SSLError) as exc:
                log.error("cannot start: cannot serve metrics on %s: %s", address, exc)
                self.metrics = None
                await agent.stop()
                return 2
        watchdog = watchdog_interval()
        tasks = [asyncio.create_task(agent.serve(), name="agent")]
        if watchdog:
            tasks.append(asyncio.create_task(watchdog_loop(watchdog), name="watchdog"))
        self.started.set()
        try:
            while not self._stop.is_set():
                reload_wait = asyncio.create_task(self._reload.wait())
                stop_wait = asyncio.create_task(self._stop.wait())
                await asyncio.wait([reload_wait, stop_wait], return_when=asyncio.FIRST_COMPLETED)
                reload_wait.cancel()
                stop_wait.cancel()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    await self._do_reload(agent)
        finally:
            await agent.stop()
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
            if self.metrics is not None:
                self.metrics.stop()
            if self._provider is not None:
                self._provider.shutdown()
        return 0

    def _tracing(self) -> TracerProvider | None:
        if self._provider is None:
            self._provider = build_provider(self.loaded.config.agent.environment)
            if self._provider is not None:
                trace.set_tracer_provider(self._provider)
                instrument_sql(self._provider)
        return self._provider

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: self.request_stop,
            signal.SIGINT: self.request_stop,
            signal.SIGHUP: self.request_reload,
        }
        for signum, handler in handlers.items():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, handler)

    async def _start_with_retry(self) -> Agent | None:
        """A database that is down at boot is waited for; a config problem is not."""
        delay = 1.0
        while not self._stop.is_set():
            agent = Agent(self.loaded, name=self.name, tracer_provider=self._tracing())
            try:
                await agent.start()
            except (ConfigError, MigrationError) as exc:
                for line in str(exc).splitlines():
                    log.error("cannot start: %s", line)
                await agent.stop()
                return None
            except (DatabaseUnavailable, OSError) as exc:
                await agent.stop()
                self._wait_message(exc, delay)
            except Exception as exc:
                await agent.stop()
                if not is_transient(exc):
                    raise
                self._wait_message(exc, delay)
            else:
                self.agent = agent
                return agent
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 30)
        return None

    def _wait_message(self, exc: BaseException, delay: float) -> None:
        log.warning("database not available (%s); retrying in %.0fs", exc, delay)
        notify(f"STATUS=waiting for the database: {exc}"[:200])

    async def _do_reload(self, agent: Agent) -> None:
        try:
            loaded = load_config(self.config_path, require_file=True)
            await agent.reload(loaded)
        except ConfigError as exc:
            log.error(
                "reload rejected, keeping the running configuration: %s",
                "; ".join(str(p) for p in exc.problems),
            )
            return
        except Exception as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        self.loaded = loaded
        notify("STATUS=configuration reloaded")


async def run_once(loaded: LoadedConfig, name: str | None = None) -> int:
    """`pipectl agent --once`: every step and check once; 0 ok, 1 warn/skip, 2 failure."""
    provider = build_provider(loaded.config.agent.environment)
    instrument_sql(provider)
    agent = Agent(loaded, name=name, tracer_provider=provider)
    try:
        await agent.start()
        return await agent.run_once()
    finally:
        await agent.stop()
        if provider is not None:
            provider.shutdown()
