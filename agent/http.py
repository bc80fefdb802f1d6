"""The agent's /metrics endpoint: a small HTTP/1.1 server on a thread and event loop of its own.

wsgiref's server gave every connection a thread and every recv() its own timeout, so 1,400
clients trickling a byte now and then held 1,400 threads and file descriptors until the
agent's own database reconnects failed with "Too many open files". Here one event loop holds
every connection, and nothing a client does costs more than a bounded share:

- at most `Limits.max_connections` connections are open; one more closes, at once, the
  connection that has waited longest for its request head (a slow or silent client), so a
  flood of idle connections never locks a scraper out; when all of them are being answered,
  the newcomer is closed instead;
- the TLS handshake and the whole request head must arrive within `Limits.head_deadline`
  (one deadline, not one per recv: a byte every 9 s does not keep a connection), and the
  response must be taken within `Limits.write_deadline`;
- basic auth answers known credentials without bcrypt (pipectl.webconfig.BasicAuth); the
  rest are checked one at a time on a thread of their own (bcrypt releases the GIL, so the
  agent's event loop keeps running) within a CPU budget (`BcryptBudget`); beyond it a
  client gets 429 without any bcrypt work.

Every refusal is counted in `pipectl_metrics_http_refused_total{reason}`. One request per
connection (`Connection: close`), as wsgiref served it; the response comes from a WSGI app:
agent.exposition's stored bodies, or prometheus-client's app for a bare registry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from prometheus_client import CollectorRegistry, make_wsgi_app

from pipectl.agent.exposition import Exposition
from pipectl.agent.metrics import AgentMetrics
from pipectl.webconfig import CHALLENGE, BasicAuth, WebConfig

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Refused = Callable[[str], None]

_HEAD_END = b"\r\n\r\n"
_MAX_HEADERS = 100
_METHOD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class Limits:
    """What one client may cost the metrics server (see the module docstring)."""

    max_connections: int = 64
    head_deadline: float = 10.0  # seconds for the TLS handshake plus the request head
    write_deadline: float = 30.0  # seconds for the client to take the response
    max_head_bytes: int = 16_384
    backlog: int = 128
    # bcrypt checks of unknown credentials: at most this share of one core over time,
    # with a burst of this many CPU seconds; failures are charged, successes refunded.
    bcrypt_share: float = 0.1
    bcrypt_burst: float = 1.0
    bcrypt_waiting: int = 8  # checks queued behind the running one; beyond: 429 at once


class BcryptBudget:
    """A token bucket of bcrypt CPU seconds, refilled at `share` seconds per second.

    A check may start while the balance is positive; its CPU time is charged afterwards
    when it failed (a right password costs nothing, so an attack does not keep the
    legitimate scraper out once it got in: it is remembered from then on)."""

    def __init__(
        self, share: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.share = share
        self.burst = burst
        self.clock = clock
        self.balance = burst
        self._refilled = clock()

    def allows(self) -> bool:
        now = self.clock()
        self.balance = min(self.burst, self.balance + (now - self._refilled) * self.share)
        self._refilled = now
        return self.balance > 0

    def charge(self, cpu_seconds: float) -> None:
        self.balance -= cpu_seconds


@dataclass
class MetricsServer:
    """The /metrics endpoint on a thread of its own; never touches the agent's event loop.

    Served from agent.exposition's stored bodies when given AgentMetrics (rendered after
    changes, not per scrape); a bare registry is rendered per scrape as prometheus-client
    does. Plain HTTP, or HTTPS and basic auth from a web config."""

    address: str
    web: WebConfig | None = None
    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], float] = time.monotonic  # the bcrypt budget's (tests freeze it)
    port: int | None = None
    exposition: Exposition | None = None
    auth: BasicAuth | None = None
    _server: _HttpServer | None = None

    def start(self, metrics: AgentMetrics | CollectorRegistry) -> None:
        host, _, port = self.address.rpartition(":")
        host = host.strip("[]")
        tls = self.web.ssl_context() if self.web is not None and self.web.tls else None
        if self.web is not None and self.web.users:
            self.auth = BasicAuth(self.web.users)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server(
            (host, int(port)), family=family, backlog=self.limits.backlog
        )
        self.port = int(listener.getsockname()[1])
        app: WsgiApp
        refused: Refused = _not_counted
        if isinstance(metrics, AgentMetrics):
            self.exposition = app = Exposition(
                metrics.registry, metrics.changes, live=metrics.process_registry
            )
            refused = metrics.http_refusal
        else:
            app = make_wsgi_app(metrics)
        budget = BcryptBudget(self.limits.bcrypt_share, self.limits.bcrypt_burst, self.clock)
        self._server = _HttpServer(listener, app, tls, self.auth, budget, self.limits, refused)
        self._server.start()
        if self.exposition is not None:
            self.exposition.start()
        scheme = "https" if tls is not None else "http"
        auth = " with basic auth" if self.auth is not None else ""
        log.info("serving metrics on %s://%s:%d/metrics%s", scheme, host, self.port, auth)

    @property
    def open_connections(self) -> int:
        return len(self._server.connections) if self._server is not None else 0

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.exposition is not None:
            self.exposition.stop()
            self.exposition = None


def _not_counted(reason: str) -> None:
    return


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]


@dataclass(frozen=True)
class _Response:
    status: str
    headers: list[tuple[str, str]]
    body: bytes = b""


class _BadRequest(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class _HttpServer:
    """The event loop, its thread and the connections; see the module docstring."""

    def __init__(
        self,
        listener: socket.socket,
        app: WsgiApp,
        tls: ssl.SSLContext | None,
        auth: BasicAuth | None,
        budget: BcryptBudget,
        limits: Limits,
        refused: Refused,
    ) -> None:
        self.listener = listener
        self.app = app
        self.tls = tls
        self.auth = auth
        self.budget = budget
        self.limits = limits
        self.refused = refused
        self.connections: dict[_Client, None] = {}  # in order of arrival
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(_quiet)
        self.thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._stopping = asyncio.Event()  # bound to the loop that first waits on it
        self._bcrypt = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bcrypt")
        self._verifying = 0
        self._one_check = asyncio.Lock()  # one bcrypt check at a time
        self.scheme = "https" if tls is not None else "http"
        self.host, self.port = listener.getsockname()[:2]

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop ended on its own
                self.loop.call_soon_threadsafe(self._stop_soon)
            self.thread.join(timeout=5)
        self._bcrypt.shutdown(wait=False, cancel_futures=True)
        self.listener.close()

    def _stop_soon(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        server = await self.loop.create_server(lambda: _Client(self), sock=self.listener)
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for client in list(self.connections):
                client.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---------------------------------------------------------------- connections

    def admit(self, client: _Client) -> bool:
        """Make room for a new connection: close the one that has waited longest for its
        request head; when every connection is being answered, refuse the newcomer."""
        # The refusal is counted once the swap is done: whoever reads the counter (a
        # scrape, a test on another thread) then sees the connections it resulted in.
        if len(self.connections) >= self.limits.max_connections:
            oldest = next((c for c in self.connections if not c.answering), None)
            if oldest is None:
                self.refused("connection_limit")
                return False
            oldest.abort()
            self.connections[client] = None
            self.refused("connection_limit")
            return True
        self.connections[client] = None
        return True

    def forget(self, client: _Client) -> None:
        self.connections.pop(client, None)

    # ---------------------------------------------------------------- requests

    async def answer(self, request: _Request, peer: Any) -> _Response:
        if self.auth is not None:
            denied = await self._authorize(request.headers.get("authorization", ""))
            if denied is not None:
                return denied
        return _call_wsgi(self.app, self._environ(request, peer))

    async def _authorize(self, header: str) -> _Response | None:
        """None when the credentials are good; else a 401, or a 429 over the budget."""
        assert self.auth is not None
        known = self.auth.known(header)
        if known is None:
            if self._verifying > self.limits.bcrypt_waiting:
                return self._throttled()
            self._verifying += 1
            try:
                async with self._one_check:
                    known = await self._verify(header)
            finally:
                self._verifying -= 1
            if known is None:
                return self._throttled()
        if known:
            return None
        return _plain("401 Unauthorized", [("WWW-Authenticate", CHALLENGE)])

    async def _verify(self, header: str) -> bool | None:
        """One bcrypt check on its own thread, if the budget allows (None when not)."""
        assert self.auth is not None
        known = self.auth.known(header)  # a request with the same header checked it meanwhile
        if known is not None:
            return known
        if not self.budget.allows():
            return None
        verdict = await self.loop.run_in_executor(self._bcrypt, self.auth.verify, header)
        if not verdict.allowed:
            self.budget.charge(verdict.cpu_seconds)
        return verdict.allowed

    def _throttled(self) -> _Response:
        self.refused("auth_throttled")
        return _plain("429 Too Many Requests", [("Retry-After", "1")])

    def _environ(self, request: _Request, peer: Any) -> dict[str, Any]:
        """The WSGI environ of one request (PEP 3333); the request has no body."""
        parts = urlsplit(request.target)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(parts.path, "latin-1"),
            "QUERY_STRING": parts.query,
            "SERVER_NAME": str(self.host),
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": request.version,
            "REMOTE_ADDR": str(peer[0]) if isinstance(peer, tuple) else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": self.scheme,
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in request.headers.items():
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value
            else:
                environ[f"HTTP_{key}"] = value
        return environ


class _Client(asyncio.Protocol):
    """One connection: admitted (or refused), its request head read against the deadline
    (TLS handshake included), answered once, closed."""

    def __init__(self, server: _HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self.answering = False  # False while the request head is awaited
        self._head = bytearray()
        self._deadline: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        if not self.server.admit(self):
            transport.abort()
            return
        self._deadline = self.loop.call_later(self.limits.head_deadline, self._head_too_slow)
        if self.server.tls is not None:
            transport.pause_reading()  # not a byte of the handshake for data_received
            self._task = self.loop.create_task(self._start_tls(self.server.tls))

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        assert self.transport is not None
        try:
            upgraded = await self.loop.start_tls(self.transport, self, context, server_side=True)
        except OSError as exc:  # ssl.SSLError included: plain HTTP, an untrusted client
            log.debug("TLS handshake with %s failed: %s", self.peer, exc)
            self.abort()
            return
        if upgraded is None:  # the connection was lost (or closed to make room) meanwhile
            self.abort()
            return
        self.transport = upgraded

    def _head_too_slow(self) -> None:
        self.server.refused("head_deadline")
        log.debug("metrics client %s sent no request head in time; closed", self.peer)
        self.abort()

    def data_received(self, data: bytes) -> None:
        if self.answering:
            return  # one request per connection: a body or a second request is ignored
        start = max(0, len(self._head) - len(_HEAD_END) + 1)
        self._head += data
        end = self._head.find(_HEAD_END, start)
        if end < 0 and len(self._head) <= self.limits.max_head_bytes:
            return
        self.answering = True
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.limits.write_deadline, self.abort)
        head = bytes(self._head[: end + len(_HEAD_END)]) if end >= 0 else None
        self._task = self.loop.create_task(self._respond(head))

    async def _respond(self, head: bytes | None) -> None:
        request: _Request | None = None
        if head is None or len(head) > self.limits.max_head_bytes:
            response = _plain("431 Request Header Fields Too Large")
        else:
            try:
                request = _parse_head(head)
            except _BadRequest as exc:
                response = _plain(exc.status)
            else:
                response = await self._answer(request)
        if self.transport is None or self.transport.is_closing():
            return  # the client left while it was being answered
        names = {name.lower() for name, _ in response.headers}
        headers = list(response.headers)
        if "content-length" not in names:
            headers.append(("Content-Length", str(len(response.body))))
        headers.append(("Connection", "close"))
        lines = [f"HTTP/1.1 {response.status}"] + [f"{n}: {v}" for n, v in headers]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        head_only = request is not None and request.method == "HEAD"
        self.transport.write(data if head_only else data + response.body)
        self.transport.close()  # once the client has taken it all, or the deadline aborts

    async def _answer(self, request: _Request) -> _Response:
        try:
            return await self.server.answer(request, self.peer)
        except Exception:  # a bug of ours: logged, and the client is told
            log.exception("answering %s %r failed", request.method, request.target[:100])
            return _plain("500 Internal Server Error")

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()

    def abort(self) -> None:
        """Close at once: evicted, too slow, or the server stops."""
        self._forget()
        if self.transport is not None:
            self.transport.abort()

    def _forget(self) -> None:
        self.server.forget(self)
        if self._deadline is not None:
            self._deadline.cancel()


def _quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """What a client does to a connection (resets, TLS garbage) is not worth a traceback in
    the agent's log; anything else is a bug of ours and is logged as one."""
    exc = context.get("exception")
    if exc is None or isinstance(exc, OSError):
        log.debug("metrics server: %s (%s)", context.get("message"), exc)
    else:
        log.error("metrics server: %s", context.get("message"), exc_info=exc)


def _plain(status: str, headers: list[tuple[str, str]] | None = None) -> _Response:
    return _Response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])],
        f"{status}\n".encode(),
    )


def _parse_head(head: bytes) -> _Request:
    """Request line and headers (RFC 9112), strictly: anything odd is a 400."""
    try:
        text = head[: -len(_HEAD_END)].decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise _BadRequest("400 Bad Request") from None
    line, *header_lines = text.split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[0] or not set(parts[0]) <= _METHOD_CHARS:
        raise _BadRequest("400 Bad Request")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest("505 HTTP Version Not Supported")
    if not (target.startswith("/") or target == "*" or target.startswith(("http://", "https://"))):
        raise _BadRequest("400 Bad Request")
    if len(header_lines) > _MAX_HEADERS:
        raise _BadRequest("431 Request Header Fields Too Large")
    headers: dict[str, str] = {}
    for header_line in header_lines:
        name, sep, value = header_line.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
            raise _BadRequest("400 Bad Request")  # also obsolete line folding
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return _Request(method, target, version, headers)


def _call_wsgi(app: WsgiApp, environ: dict[str, Any]) -> _Response:
    """Run a WSGI app to completion and collect its response."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        started[:] = [(status, headers)]
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started[0]
    return _Response(status, headers, body)
