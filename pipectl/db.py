"""Connecting to PostgreSQL with errors an operator can act on."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, Protocol

import asyncpg

from pipectl.configfile import ConfigError, Problem, mask_secret_url
from pipectl.conninfo import ConnectionSettingsError, Target, describe_server, resolve_target


class DatabaseSection(Protocol):
    """What connecting reads of a config's [database] section."""

    @property
    def dsn(self) -> str | None: ...

    @property
    def connect_timeout(self) -> timedelta: ...

    @property
    def application_name(self) -> str: ...


class ConnectConfig(Protocol):
    """What connecting reads of a config: a validated `pipectl.config.Config`, or the
    settings of a config known to be valid (`pipectl.configcache.QuickConfig`), which a verb
    gets without loading pydantic and the check kinds."""

    @property
    def database(self) -> DatabaseSection: ...


class DatabaseUnavailable(Exception):
    """The database cannot be reached or refused us; the message says which and where."""


def describe_target(dsn: str | None) -> str:
    """Where we tried to connect, for messages; never shows a password."""
    return (
        mask_secret_url(dsn) if dsn else "the server named by the libpq environment (PGHOST, ...)"
    )


def resolve(dsn: str | None) -> Target:
    """libpq's conventions applied to `dsn` (conninfo.resolve_target); a service that cannot
    be used is a configuration problem, reported like one."""
    try:
        return resolve_target(dsn)
    except ConnectionSettingsError as exc:
        raise ConfigError([Problem("database connection", None, "", str(exc))]) from None


# What decode_json returns for JSON nested deeper than Python's parser can follow.
UNREADABLE_JSON = "(unreadable: JSON nested too deeply)"
_MAX_INT_DIGITS = 4000  # below sys.get_int_max_str_digits(), which int() enforces


def _parse_int(digits: str) -> int | float:
    return int(digits) if len(digits.lstrip("-")) <= _MAX_INT_DIGITS else float(digits)


def decode_json(text: str) -> Any:
    """json/jsonb values as read from the database. Anyone who may insert a request chooses
    its arguments, so no value may break a read of many rows: numbers of thousands of digits
    become floats (inf), and nesting too deep for Python becomes UNREADABLE_JSON."""
    try:
        return json.loads(text, parse_int=_parse_int)
    except RecursionError:
        return UNREADABLE_JSON


# What a failed connection attempt raises (ValueError: a DSN asyncpg cannot parse).
_CONNECT_ERRORS = (
    TimeoutError,
    OSError,
    ValueError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


# Client-side TCP keepalive: an idle connection whose server vanished without a word (a
# black-holed network, a host that lost power) fails within about a minute instead of
# hanging until the next statement's timeout. TCP_USER_TIMEOUT bounds unacknowledged writes.
KEEPALIVE = {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}
USER_TIMEOUT_MS = 60_000


def _keepalive(conn: asyncpg.Connection) -> None:
    transport = getattr(conn, "_transport", None)  # asyncpg offers no public way to the socket
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in KEEPALIVE.items():
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    except OSError:
        pass  # best effort: statement timeouts bound the wait anyway


async def _init_connection(conn: asyncpg.Connection) -> None:
    _keepalive(conn)
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=decode_json, schema="pg_catalog"
        )


async def connect(
    config: ConnectConfig,
    *,
    application_name: str | None = None,
    dsn: str | None = None,
    settings: Mapping[str, str] | None = None,
) -> asyncpg.Connection:
    """One connection, JSON decoded, with a message that names the target on failure.
    `settings` are session settings (GUCs) sent at connect."""
    target = resolve(dsn if dsn is not None else config.database.dsn)
    try:
        conn: asyncpg.Connection = await asyncpg.connect(
            **_connect_args(config, target, application_name, settings)
        )
    except _CONNECT_ERRORS as exc:
        raise unavailable(target, exc) from exc
    await _init_connection(conn)
    return conn


async def create_pool(
    config: ConnectConfig,
    *,
    min_size: int = 1,
    max_size: int = 4,
    application_name: str | None = None,
    settings: Mapping[str, str] | None = None,
    dsn: str | None = None,
    command_timeout: float | None = None,
) -> asyncpg.Pool:
    """A pool whose first connection is made (and checked) here, so that a wrong password or
    a missing role is the same readable DatabaseUnavailable as for `connect`, whoever asks.
    `command_timeout` bounds every statement on the client (seconds)."""
    target = resolve(dsn if dsn is not None else config.database.dsn)
    try:
        pool = await asyncpg.create_pool(
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            init=_init_connection,
            **_connect_args(config, target, application_name, settings),
        )
    except _CONNECT_ERRORS as exc:
        raise unavailable(target, exc) from exc
    assert pool is not None
    if min_size == 0:
        try:
            async with pool.acquire():
                pass
        except _CONNECT_ERRORS as exc:
            await pool.close()
            raise unavailable(target, exc) from exc
    return pool


def _connect_args(
    config: ConnectConfig,
    target: Target,
    application_name: str | None,
    settings: Mapping[str, str] | None,
) -> dict[str, Any]:
    """asyncpg's arguments: the user's application name (URL, service, PGAPPNAME) wins over
    pipectl's own, as over libpq's fallback_application_name."""
    own_name = application_name or config.database.application_name
    timeout = target.connect_timeout or config.database.connect_timeout.total_seconds()
    return {
        "dsn": target.dsn,
        "timeout": timeout,
        "server_settings": {
            **target.server_settings,
            "application_name": target.application(own_name),
            **(settings or {}),
        },
    }


async def describe_connection(conn: asyncpg.Connection, target: Target) -> str:
    """`/var/run/postgresql:5432/apes as alice (how it was chosen)` for a live connection:
    which server a connection the user did not spell out actually reached."""
    row = await conn.fetchrow("SELECT current_database() AS db, session_user AS who")
    assert row is not None
    address = getattr(conn, "_addr", None)  # asyncpg keeps the address it connected to
    return f"{describe_server(address, row['db'], row['who'])} ({target.how})"


def unavailable(target: Target, exc: BaseException) -> DatabaseUnavailable:
    """The one message for a connection that failed, for the CLI, the console and the agent:
    where (password masked) and why (connect_failure_reason)."""
    where = describe_target(target.dsn) if target.dsn else f"the server chosen by {target.how}"
    return DatabaseUnavailable(f"cannot connect to {where}: {connect_failure_reason(exc)}")


@asynccontextmanager
async def connection(
    config: ConnectConfig, application_name: str | None = None
) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(config, application_name=application_name)
    try:
        yield conn
    finally:
        await conn.close()


def connect_failure_reason(exc: BaseException) -> str:
    """Why a connection attempt failed, in words an operator can act on."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is PostgreSQL running and listening there?)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return f"authentication failed: {exc}"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"no such database: {exc}"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def json_arg(value: Any) -> str:
    """Encode for a jsonb parameter when the codec is not installed on a connection."""
    return json.dumps(value, default=str)
