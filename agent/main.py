"""The agent process: signals, systemd, metrics endpoint, reconnecting start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import pipectl.checks  # noqa: F401  (registers the check kinds, so a reload parses them)
from pipectl.agent.http import MetricsServer
from pipectl.agent.metrics import AgentMetrics
from pipectl.agent.service import Agent
from pipectl.agent.systemd import notify, notify_reloading, watchdog_interval, watchdog_loop
from pipectl.agent.tracing import build_provider, instrument_sql
from pipectl.config import ConfigError, LoadedConfig, load_config
from pipectl.db import DatabaseUnavailable
from pipectl.migrate import MigrationError
from pipectl.resilience import is_transient
from pipectl.telemetry import TelemetryError
from pipectl.webconfig import load_web_config

log = logging.getLogger(__name__)


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
        """SIGTERM/SIGINT: systemd hears STOPPING=1 once, whatever the agent was doing
        (serving, or waiting for the database at boot)."""
        if not self._stop.is_set():
            notify("STOPPING=1", "STATUS=stopping")
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT. Exit 0 on a clean stop, 2 on a config problem.

        /metrics is served first: while the database is unreachable at boot Prometheus
        scrapes `pipectl_database_up 0` and no agent alive, so the alerts can say so."""
        self._install_signals()
        try:
            self._tracing()
        except TelemetryError as exc:
            log.error("cannot start: OpenTelemetry: %s", exc)
            return 2
        metrics = AgentMetrics()
        if not self._serve_metrics(metrics):
            return 2
        try:
            return await self._serve(metrics)
        finally:
            if self.metrics is not None:
                self.metrics.stop()

    def _serve_metrics(self, metrics: AgentMetrics) -> bool:
        """Start the /metrics endpoint (when an address is configured); False when it
        cannot be (a bad web config, the port taken), said in the log."""
        config = self.loaded.config.agent
        address = self.metrics_address or config.metrics_address
        if not address:
            return True
        web_file = config.metrics_web_config
        try:
            web = load_web_config(self.loaded.resolve(web_file)) if web_file else None
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("cannot start: %s", problem)
            return False
        server = MetricsServer(address, web)
        try:
            server.start(metrics)
        except (OSError, ssl.SSLError) as exc:
            log.error("cannot start: cannot serve metrics on %s: %s", address, exc)
            return False
        self.metrics = server
        return True

    async def _serve(self, metrics: AgentMetrics) -> int:
        agent = await self._start_with_retry(metrics)
        if agent is None:
            return 0 if self._stop.is_set() else 2
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

    async def _start_with_retry(self, metrics: AgentMetrics) -> Agent | None:
        """A database that is down at boot is waited for; a config problem is not."""
        delay = 1.0
        while not self._stop.is_set():
            agent = Agent(
                self.loaded, name=self.name, tracer_provider=self._tracing(), metrics=metrics
            )
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
            metrics.shared(None)  # whatever a failed attempt read is not known any more
            metrics.database_reachable(False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 30)
        return None

    def _wait_message(self, exc: BaseException, delay: float) -> None:
        log.warning("database not available (%s); retrying in %.0fs", exc, delay)
        notify(f"STATUS=waiting for the database: {exc}"[:200])

    async def _do_reload(self, agent: Agent) -> None:
        """SIGHUP: RELOADING=1 (with MONOTONIC_USEC, as Type=notify-reload wants), then
        READY=1 whatever the outcome; STATUS= says whether the new configuration runs or
        why it was rejected (`systemctl status` shows it)."""
        notify_reloading()
        try:
            loaded = load_config(self.config_path, require_file=True)
            await agent.reload(loaded)
        except ConfigError as exc:
            why = "; ".join(str(p) for p in exc.problems)
            log.error("reload rejected, keeping the running configuration: %s", why)
            self._reload_rejected(why)
            return
        except Exception as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            self._reload_rejected(str(exc))
            return
        self.loaded = loaded
        notify("READY=1", f"STATUS=serving; configuration reloaded at {_clock_time()}")

    @staticmethod
    def _reload_rejected(why: str) -> None:
        status = f"serving the previous configuration; reload rejected at {_clock_time()}: {why}"
        notify("READY=1", f"STATUS={status}")


def _clock_time() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S UTC")


async def run_once(loaded: LoadedConfig, name: str | None = None) -> int:
    """`pipectl agent --once`: every step and check once; 0 ok, 1 warn/skip, 2 failure."""
    try:
        provider = build_provider(loaded.config.agent.environment)
    except TelemetryError as exc:
        log.error("cannot start: OpenTelemetry: %s", exc)
        return 2
    instrument_sql(provider)
    agent = Agent(loaded, name=name, tracer_provider=provider)
    try:
        await agent.start()
        return await agent.run_once()
    finally:
        await agent.stop()
        if provider is not None:
            provider.shutdown()
