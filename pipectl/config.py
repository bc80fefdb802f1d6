"""TOML configuration -> one validated model, with `file:line` errors and value origins.

The model is declarative (pydantic v2, strict, unknown keys refused). Everything pydantic cannot
see on its own — duplicate names, dependency cycles, references between steps and checks — is
checked here on the raw document too, so `pipectl config check` reports every problem at once.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
import typing
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SerializeAsAny,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

# What needs no model lives in pipectl.configfile (the verbs' fast path imports only it);
# these names stay importable from here.
from pipectl.configfile import DATABASE_URL_ENV as DATABASE_URL_ENV
from pipectl.configfile import REDIS_URL_ENV as REDIS_URL_ENV
from pipectl.configfile import ConfigError as ConfigError
from pipectl.configfile import ConfigSource, env_overrides, read_source
from pipectl.configfile import Problem as Problem
from pipectl.configfile import mask_secret_url as mask_secret_url
from pipectl.dag import find_cycle
from pipectl.durations import (
    POSTGRES_TIMEOUT_MAX,
    DurationError,
    bounded,
    format_duration,
    parse_duration,
)
from pipectl.identifiers import IdentifierError, Relation, check_name, parse_column
from pipectl.lineage import watched_by_check
from pipectl.sqlscan import SqlScanError, step_sql_escapes
from pipectl.tomlpos import Path as KeyPath
from pipectl.tomlpos import line_of, locate_keys

# ---------------------------------------------------------------------------------------------
# Field types


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a duration such as '30s' or '5m', got {value}")
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        raise ValueError(f"durations are never negative, got {value}")
    if isinstance(value, (bool, int | float)):
        raise ValueError(f"durations need a unit: write '{value}s' or '{value}m', not {value}")
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None


def _positive(value: timedelta) -> timedelta:
    if value.total_seconds() <= 0:
        raise ValueError("must be longer than zero")
    return value


def _at_most(limit: timedelta, why: str) -> AfterValidator:
    """A per-option bound on top of durations.MAX_DURATION; `why` ends the message."""

    def check(value: timedelta) -> timedelta:
        try:
            return bounded(value, maximum=limit)
        except DurationError as exc:
            raise ValueError(f"{exc} ({why})") from None

    return AfterValidator(check)


def _relation(value: Any) -> Relation:
    if isinstance(value, Relation):
        return value
    try:
        return Relation.parse(value)
    except IdentifierError as exc:
        raise ValueError(str(exc)) from None


def _column(value: Any) -> str:
    try:
        return parse_column(value)
    except IdentifierError as exc:
        raise ValueError(str(exc)) from None


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a name (text), got {type(value).__name__}")
    try:
        return check_name(value)
    except IdentifierError as exc:
        raise ValueError(str(exc)) from None


def _timezone(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a time zone name such as 'UTC' or 'Europe/Berlin'")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}; use an IANA name such as 'UTC'") from None
    return value


def _cron(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a crontab expression such as '*/5 * * * *'")
    from apscheduler.triggers.cron import CronTrigger

    try:
        trigger = CronTrigger.from_crontab(value, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
    # A date that does not exist (31 February) parses but would never run the step. Every
    # date exists in UTC that exists anywhere, so UTC answers for every time zone.
    if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:
        raise ValueError(f"cron expression {value!r} never fires: no date matches it")
    return value


_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SSL_FILES = ("sslrootcert", "sslcert", "sslkey", "sslcrl")


def _bad_port(url: str, netloc: str, port: str) -> str:
    """The message for a port that is not one. A password holding '/', '?' or '#' unencoded
    ends the authority early, so its start is what looks like the port: quoted only when the
    user info was read (or the URL has none)."""
    if "@" in netloc or "@" not in url:
        return f"port {port!r} is not a number from 1 to 65535"
    return (
        "the port is not a number from 1 to 65535; if the password holds '/', '?' or '#',"
        " percent-encode them (%2F, %3F, %23)"
    )


def _dsn(value: Any) -> str:
    """A postgresql:// URL asyncpg can use, checked here so that a typo is a located config
    error rather than a driver traceback. Messages never repeat the password."""
    if not isinstance(value, str):
        raise ValueError(f"expected a postgresql:// URL, got {_toml_type(value)}")
    if "://" not in value:
        raise ValueError(
            "expected a URL such as postgresql://user@host:5432/dbname "
            "(libpq key=value strings are not supported)"
        )
    try:
        parts = urlsplit(value)
        query = parse_qs(parts.query, keep_blank_values=True)
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"the scheme must be postgresql://, not {parts.scheme}://")
    hosts = parts.netloc.rsplit("@", 1)[-1]
    for spec in hosts.split(","):
        port = spec.rsplit("]", 1)[-1].rpartition(":")[2] if ":" in spec else ""
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(_bad_port(value, parts.netloc, port))
    for mode in query.get("sslmode", []):
        if mode not in _SSLMODES:
            raise ValueError(f"sslmode {mode!r} is not one of {', '.join(_SSLMODES)}")
    for key in _SSL_FILES:
        for path in query.get(key, []):
            if path and not Path(path).expanduser().is_file():
                raise ValueError(f"{key} file {path!r} does not exist or is not a file")
    return value


def files_checked(config: Config) -> list[str]:
    """The files validating `config` found (the SSL files its DSNs name): a config known to
    be valid (pipectl.configcache) is so only while they still are files."""
    named = []
    for dsn in (config.database.dsn, config.database.replica_dsn):
        query = parse_qs(urlsplit(dsn).query, keep_blank_values=True) if dsn else {}
        named += [path for key in _SSL_FILES for path in query.get(key, []) if path]
    return named


def _redis_url(value: Any) -> str:
    """A URL redis-py accepts (redis://, rediss:// or unix://), checked at load time."""
    if not isinstance(value, str):
        raise ValueError(f"expected a redis:// URL, got {_toml_type(value)}")
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    try:
        port = parts.port
    except ValueError:
        text = parts.netloc.rsplit("@", 1)[-1].rpartition(":")[2]
        raise ValueError(_bad_port(value, parts.netloc, text)) from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            "expected a URL such as redis://host:6379/0 (rediss:// for TLS, unix:// for a "
            f"socket), not {parts.scheme + '://' if parts.scheme else 'a bare name'}"
        )
    if port == 0:
        raise ValueError("port 0 is not a Redis port")
    return value


def parse_address(value: Any) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("expected HOST:PORT, such as '127.0.0.1:10144'")
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"port in {value!r} must be a number from 0 (any free port) to 65535")
    if not host:
        raise ValueError(f"host missing in {value!r}; use 127.0.0.1 for loopback")
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str),
]
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
# Sent to PostgreSQL as statement_timeout / lock_timeout, int milliseconds there.
PostgresTimeout = Annotated[
    PositiveDuration, _at_most(POSTGRES_TIMEOUT_MAX, "PostgreSQL's limit for timeouts")
]
# Waits where more than an hour helps nobody: a connection, a heartbeat, a clean stop.
WaitDuration = Annotated[PositiveDuration, _at_most(timedelta(hours=1), "longer helps nobody")]
RelationName = Annotated[
    Relation, BeforeValidator(_relation), PlainSerializer(str, return_type=str)
]
ColumnName = Annotated[str, BeforeValidator(_column)]
Name = Annotated[str, BeforeValidator(_name)]
TimeZone = Annotated[str, BeforeValidator(_timezone)]
Cron = Annotated[str, BeforeValidator(_cron)]
Address = Annotated[str, BeforeValidator(parse_address)]
DatabaseUrl = Annotated[str, BeforeValidator(_dsn)]
RedisUrl = Annotated[str, BeforeValidator(_redis_url)]
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]


class Strict(BaseModel):
    """Every config table refuses keys it does not know and values of the wrong type."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------
# Sections


class DatabaseConfig(Strict):
    dsn: DatabaseUrl | None = None
    connect_timeout: WaitDuration = timedelta(seconds=10)
    application_name: str = "pipectl"
    replica_dsn: DatabaseUrl | None = None
    """A streaming replica of `dsn` that the checks' probes read (results are written to
    `dsn`); None probes `dsn` itself."""
    replica_max_lag: PositiveDuration = timedelta(minutes=5)
    """A replica further behind than this is reported (checks `error`), not probed."""


class RedisConfig(Strict):
    url: RedisUrl | None = None
    timeout: WaitDuration = timedelta(seconds=2)


class AgentConfig(Strict):
    name: str | None = None
    heartbeat: WaitDuration = timedelta(seconds=5)
    lost_after: int = Field(default=3, ge=2, le=100)
    metrics_address: Address | None = "127.0.0.1:10144"
    metrics_web_config: str | None = None
    timezone: TimeZone = "UTC"
    max_parallel_runs: int = Field(default=4, ge=1, le=64)
    max_parallel_checks: int = Field(default=4, ge=1, le=64)
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    environment: str = "production"
    shutdown_timeout: WaitDuration = timedelta(seconds=10)


class RetentionConfig(Strict):
    runs: PositiveDuration = timedelta(days=30)
    results: PositiveDuration = timedelta(days=30)
    samples: PositiveDuration = timedelta(days=90)
    events: PositiveDuration = timedelta(days=90)
    requests: PositiveDuration = timedelta(days=30)


class StepDefaults(Strict):
    statement_timeout: PostgresTimeout = timedelta(minutes=5)
    lock_timeout: PostgresTimeout = timedelta(seconds=10)
    retries: int = Field(default=3, ge=0, le=20)
    retry_backoff: PositiveDuration = timedelta(seconds=2)
    retry_backoff_max: PositiveDuration = timedelta(minutes=1)
    jitter: Duration = timedelta(0)
    misfire_grace: PositiveDuration = timedelta(minutes=1)


class CheckDefaults(Strict):
    every: PositiveDuration = timedelta(minutes=1)
    timeout: PostgresTimeout = timedelta(seconds=10)
    hysteresis: int = Field(default=2, ge=1, le=20)
    incremental: bool = True
    """The agent's windowed checks keep per-bucket partial aggregates and read only new rows
    at each tick (checks/incremental.py); a check's own `incremental` wins."""
    incremental_overlap: Annotated[
        Duration, _at_most(timedelta(hours=1), "re-reading more at every tick defeats the point")
    ] = timedelta(seconds=10)
    """How far behind the last tick's instant each tick reads again: rows committed that
    late (a transaction that stamped its rows, then took this long to commit) are seen."""
    incremental_resync: Annotated[
        PositiveDuration, _at_most(timedelta(days=30), "drift must stay bounded")
    ] = timedelta(hours=24)
    """Every this long the partial aggregates are rebuilt by one full read of the window."""


class RowCountGate(Strict):
    """The new content's row count against the previous content's, as a ratio (new / old).
    Not judged while the previous content is empty or not populated."""

    min_ratio: float | None = Field(default=None, ge=0.0)
    max_ratio: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="after")
    def _bounds(self) -> RowCountGate:
        if self.min_ratio is None and self.max_ratio is None:
            raise ValueError("give 'min_ratio', 'max_ratio' or both")
        if (
            self.min_ratio is not None
            and self.max_ratio is not None
            and self.min_ratio > self.max_ratio
        ):
            raise ValueError("'min_ratio' is above 'max_ratio'")
        return self


class GroupsGate(Strict):
    """Groups (distinct values of `keys`) of the previous content missing from the new one:
    at most `max_lost`, as a fraction of the previous groups (0: none may go)."""

    keys: list[ColumnName] = Field(min_length=1)
    max_lost: Ratio = 0.0


class GatesConfig(Strict):
    """Checks on a step's new content, inside the refresh's transaction: all pass -> COMMIT;
    one fails -> ROLLBACK, the old content stays and the run is recorded as held."""

    relation: RelationName | None = None
    """The relation the built-in gates measure: the step's own relation by default (a
    matview step); an sql step names the table its statement rewrites."""
    row_count: RowCountGate | None = None
    not_null: list[ColumnName] = Field(default_factory=list)
    """Columns (the summary's keys) no row of the new content may have NULL in."""
    groups: GroupsGate | None = None
    checks: list[Name] = Field(default_factory=list)
    """Configured checks run on the new content (fail or error holds; warn passes)."""

    @property
    def builtin(self) -> bool:
        return self.row_count is not None or bool(self.not_null) or self.groups is not None


# --- incremental summaries -------------------------------------------------------------------

INCREMENTAL_FUNCTIONS = (
    "count",
    "count_if",
    "sum",
    "avg",
    "min",
    "max",
    "stddev",
    "stddev_samp",
    "stddev_pop",
    "variance",
    "var_samp",
    "var_pop",
    "count_distinct",
    "array_distinct",
)
# Aggregates asked for that per-bucket partial states cannot give, with the reason.
NOT_INCREMENTAL = {
    "percentile_cont": "a percentile needs every value of the window: per-bucket states "
    "cannot be merged into it",
    "percentile_disc": "a percentile needs every value of the window: per-bucket states "
    "cannot be merged into it",
    "median": "a median needs every value of the window: per-bucket states cannot be merged "
    "into it",
    "mode": "the most frequent value needs every value's count over the window",
    "string_agg": "it keeps every value of the window, not a bounded per-bucket state",
    "array_agg": "it keeps every value of the window (array_distinct keeps distinct values)",
    "sql": "arbitrary SQL cannot be merged across buckets",
}


class IncrementalCondition(Strict):
    """`column op value`, the condition a `count_if` counts (COUNT(CASE WHEN ... THEN 1 END))."""

    column: ColumnName
    op: Literal["=", "<>", "<", "<=", ">", ">=", "is_null", "is_not_null"]
    value: int | float | None = None

    @model_validator(mode="after")
    def _operand(self) -> IncrementalCondition:
        if self.op in ("is_null", "is_not_null") and self.value is not None:
            raise ValueError(f"'{self.op}' takes no 'value'")
        if self.op not in ("is_null", "is_not_null") and self.value is None:
            raise ValueError(f"'{self.op}' needs a 'value' (a number)")
        return self


class IncrementalAggregate(Strict):
    """One output column of an incremental summary: `fn` over `column` (cast to `cast`)."""

    name: ColumnName
    fn: str
    column: ColumnName | None = None
    cast: Literal["float8", "numeric", "bigint", "integer"] | None = None
    where: IncrementalCondition | None = None
    element_key: str | None = None
    """count_distinct / array_distinct over `column`, a jsonb array: the distinct values of
    `elem ->> element_key` of its elements (rows whose value is not an array add none)."""

    @field_validator("fn")
    @classmethod
    def _maintainable(cls, fn: str) -> str:
        if fn in INCREMENTAL_FUNCTIONS:
            return fn
        reason = NOT_INCREMENTAL.get(fn.lower())
        if reason is not None:
            raise ValueError(
                f"{fn!r} cannot be maintained incrementally: {reason}; keep this summary a "
                'materialized view (kind = "matview")'
            )
        raise ValueError(
            f"unknown aggregate {fn!r}; expected one of {', '.join(INCREMENTAL_FUNCTIONS)}"
        )

    @model_validator(mode="after")
    def _shape(self) -> IncrementalAggregate:
        if self.fn == "count_if":
            if self.where is None:
                raise ValueError("count_if needs 'where' (the condition it counts)")
            if self.column is not None:
                raise ValueError("count_if counts rows: give 'where', not 'column'")
        elif self.where is not None:
            raise ValueError(f"'where' is only for count_if, not {self.fn}")
        if self.fn not in ("count", "count_if") and self.column is None:
            raise ValueError(f"{self.fn} needs 'column'")
        if self.element_key is not None and self.fn not in ("count_distinct", "array_distinct"):
            raise ValueError("'element_key' is only for count_distinct and array_distinct")
        if self.element_key is not None and not self.element_key:
            raise ValueError("'element_key' is empty")
        if self.cast is not None and self.fn in (
            "count",
            "count_if",
            "count_distinct",
            "array_distinct",
        ):
            raise ValueError(f"'cast' changes nothing for {self.fn}")
        return self


class IncrementalKey(Strict):
    """A grouping key: a column of the source, or the time column truncated to an hour or a
    day (GROUP BY date_trunc('day', created_at))."""

    name: ColumnName
    column: ColumnName | None = None
    truncate: Literal["hour", "day"] | None = None

    @model_validator(mode="after")
    def _one(self) -> IncrementalKey:
        if (self.column is None) == (self.truncate is None):
            raise ValueError(
                "give either 'column' (a source column) or 'truncate' (the time column's hour "
                "or day)"
            )
        return self


class IncrementalConfig(Strict):
    """A summary over a sliding window of `source` (`time_column >= now() - window`), kept as
    per-bucket partial aggregates and published as the table `relation`."""

    source: RelationName
    time_column: ColumnName
    window: PositiveDuration
    bucket: Literal["hour", "day"] = "hour"
    overlap: Annotated[
        Duration, _at_most(timedelta(days=1), "re-reading more each refresh helps nobody")
    ] = timedelta(minutes=5)
    """How far behind the last refresh each refresh re-reads, for rows of transactions that
    committed late."""
    keys: list[IncrementalKey] = Field(min_length=1)
    aggregates: list[IncrementalAggregate] = Field(min_length=1)

    @model_validator(mode="after")
    def _names(self) -> IncrementalConfig:
        names = [k.name for k in self.keys] + [a.name for a in self.aggregates]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"output column {twice[0]!r} is named twice")
        for key in self.keys:
            if key.truncate == "hour" and self.bucket == "day":
                raise ValueError(f'key {key.name!r} groups by the hour, finer than bucket = "day"')
        return self


class StepConfig(Strict):
    """One unit of pipeline work the agent runs: refresh a summary, call a function, or watch."""

    name: Name
    kind: Literal["matview", "sql", "view", "incremental"]
    relation: RelationName | None = None
    sql: str | None = None
    description: str = ""
    every: PositiveDuration | None = None
    cron: Cron | None = None
    timezone: TimeZone | None = None
    jitter: Duration | None = None
    misfire_grace: PositiveDuration | None = None
    depends_on: list[Name] = Field(default_factory=list)
    statement_timeout: PostgresTimeout | None = None
    lock_timeout: PostgresTimeout | None = None
    retries: int | None = Field(default=None, ge=0, le=20)
    enabled: bool = True
    gates: GatesConfig | None = None
    incremental: IncrementalConfig | None = None
    """kind = "incremental": how the summary `relation` is kept (pipectl/incremental.py)."""

    @property
    def gated_relation(self) -> Relation | None:
        """What the step's built-in gates measure (None: no built-in gates to measure)."""
        if self.gates is None or not self.gates.builtin:
            return None
        return self.gates.relation or self.relation

    @field_validator("sql")
    @classmethod
    def _stays_in_its_run(cls, sql: str | None) -> str | None:
        """The agent runs the SQL in one transaction under the step's timeouts and lock;
        statements that would leave them are refused here, before any run (pipectl.sqlscan)."""
        if sql is None:
            return None
        try:
            escapes = step_sql_escapes(sql)
        except SqlScanError as exc:
            raise ValueError(f"cannot read the SQL: {exc}") from None
        if escapes:
            raise ValueError("; ".join(str(e) for e in escapes))
        return sql

    @model_validator(mode="after")
    def _shape(self) -> StepConfig:
        if self.every is not None and self.cron is not None:
            raise ValueError("give either 'every' or 'cron', not both")
        if self.kind in ("matview", "view", "incremental") and self.relation is None:
            raise ValueError(f"a {self.kind} step needs 'relation' (the summary it watches)")
        if self.kind == "sql" and not (self.sql and self.sql.strip()):
            raise ValueError("an sql step needs 'sql' (the statement to run)")
        if self.kind != "sql" and self.sql is not None:
            raise ValueError(f"'sql' is only for kind = \"sql\", not {self.kind!r}")
        if self.kind == "incremental" and self.incremental is None:
            raise ValueError(
                "an incremental step needs [steps.incremental] (source, time_column, window, "
                "keys, aggregates)"
            )
        if self.kind != "incremental" and self.incremental is not None:
            raise ValueError(f"'incremental' is only for kind = \"incremental\", not {self.kind!r}")
        if self.gates is not None:
            if self.kind == "view":
                raise ValueError("a view step refreshes nothing: it cannot have gates")
            if self.gates.builtin and self.gated_relation is None:
                raise ValueError(
                    "an sql step's built-in gates need 'gates.relation' (the table it rewrites)"
                )
        return self


# --- checks ----------------------------------------------------------------------------------
# Each check kind owns its config model, next to its probe (pipectl/checks/<kind>.py); the core
# cannot import the kinds (layering), so they register here and `Config` validates `checks`
# against whatever was registered.


class CheckBase(Strict):
    """What every check kind shares. A kind subclasses it with `kind: Literal["<kind>"]` and
    the keys of its own; the agent and the console read only these."""

    name: Name
    description: str = ""
    every: PositiveDuration | None = None
    timeout: PostgresTimeout | None = None
    hysteresis: int | None = Field(default=None, ge=1, le=20)
    enabled: bool = True
    kind: str

    def watches(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The relations (`schema.name`) and steps this check watches: its lineage edges."""
        return watched_by_check(self.model_dump(mode="json"))


class UnregisteredCheckKinds(RuntimeError):
    """A config names a check kind, but this program registered no kinds at all: its entry
    point never imported `pipectl.checks`. A bug in the program, not in the config."""


def kind_of(model: type[CheckBase]) -> str:
    """The kind a check model declares with `kind: Literal["<kind>"]`."""
    values = typing.get_args(model.model_fields["kind"].annotation)
    if len(values) != 1 or not isinstance(values[0], str):
        raise TypeError(f"{model.__name__}.kind must be declared as Literal['<kind name>']")
    return values[0]


class CheckKinds:
    """The check kinds this program knows, in the order they were made known.
    `pipectl.checks.registry` declares the built-in kinds when it is imported (importing
    `pipectl.checks` does): a declared kind's module, with its model, is imported only when a
    config names it, so a config of three kinds does not load the other five."""

    def __init__(self) -> None:
        self._models: dict[str, type[CheckBase]] = {}
        self._declared: dict[str, typing.Callable[[], object]] = {}
        self._order: dict[str, None] = {}
        self._adapter: TypeAdapter[list[CheckBase]] | None = None

    def declare(self, kind: str, load: typing.Callable[[], object]) -> None:
        """Know `kind` by name; `load()` registers its model when a config first needs it."""
        self._declared[kind] = load
        self._order[kind] = None

    def register(self, model: type[CheckBase]) -> None:
        kind = kind_of(model)
        known = self._models.get(kind)
        if known is not None and known is not model:
            raise ValueError(
                f"check kind {kind!r} is registered twice: {known.__qualname__} and"
                f" {model.__qualname__}"
            )
        self._models[kind] = model
        self._order[kind] = None
        self._adapter = None

    def unregister(self, kind: str) -> None:
        self._models.pop(kind, None)
        self._declared.pop(kind, None)
        self._order.pop(kind, None)
        self._adapter = None

    def names(self) -> tuple[str, ...]:
        return tuple(self._order)

    def __iter__(self) -> typing.Iterator[str]:
        return iter(self.names())

    def model(self, kind: object) -> type[CheckBase] | None:
        if not isinstance(kind, str):
            return None
        if kind not in self._models and kind in self._declared:
            self._declared[kind]()
        return self._models.get(kind)

    def validate(self, value: Any) -> list[CheckBase]:
        """`checks` as models of their kinds; errors located like a discriminated union's
        (checks[3].column, ...), for _pydantic_problems to place on their lines."""
        if not self._order:
            if isinstance(value, list) and value:
                named = next(
                    (i.get("kind") for i in value if isinstance(i, dict) and "kind" in i), None
                )
                what = f"check kind {named!r}" if named is not None else "a check"
                raise UnregisteredCheckKinds(
                    f"cannot read {what}: no check kinds are registered in this program;"
                    " its entry point must import pipectl.checks before loading a config"
                )
            return []
        if isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    self.model(item.get("kind"))  # loads a declared kind the config names
        # A tagged union needs two members (one model alone would report a wrong kind as a
        # wrong literal, not as an unknown kind): load the first kinds declared if need be.
        for kind in self._order:
            if len(self._models) >= 2:
                break
            self.model(kind)
        if self._adapter is None:
            # The union of the registered models, built at run time (hence Any for mypy).
            union: Any = Union.__getitem__(tuple(self._models.values()))
            self._adapter = TypeAdapter(
                list[Annotated[union, Field(discriminator="kind")]],
                config=ConfigDict(strict=True),
            )
        return self._adapter.validate_python(value)


CHECK_KINDS = CheckKinds()


def _registered_checks(value: Any) -> list[CheckBase]:
    return CHECK_KINDS.validate(value)


class Config(Strict):
    database: DatabaseConfig = DatabaseConfig()
    redis: RedisConfig = RedisConfig()
    agent: AgentConfig = AgentConfig()
    retention: RetentionConfig = RetentionConfig()
    defaults: StepDefaults = StepDefaults()
    check_defaults: CheckDefaults = CheckDefaults()
    steps: list[StepConfig] = Field(default_factory=list)
    checks: Annotated[list[SerializeAsAny[CheckBase]], PlainValidator(_registered_checks)] = Field(
        default_factory=list
    )

    def step(self, name: str) -> StepConfig:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def check(self, name: str) -> CheckBase:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class LoadedConfig:
    """The validated config and where each of its values came from."""

    config: Config
    file: Path | None
    origins: Mapping[str, str] = field(default_factory=dict)
    searched: tuple[Path, ...] = ()

    def resolve(self, path: str) -> Path:
        """A path named in the config: relative ones are relative to the config file's
        folder (an agent under systemd runs in /), not to the working directory."""
        named = Path(path).expanduser()
        if named.is_absolute() or self.file is None:
            return named
        return self.file.parent / named

    @property
    def redis_url(self) -> str | None:
        return self.config.redis.url


def load_config(
    explicit: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    require_file: bool = False,
) -> LoadedConfig:
    """Find, read and validate the config; raise ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    return validate_source(read_source(explicit, environ=env, require_file=require_file), env)


def validate_source(source: ConfigSource, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Validate a config as read (`pipectl.configfile.read_source`); ConfigError listing
    every problem."""
    env = os.environ if environ is None else environ
    if source.file is None:
        return _finish({}, None, {}, env, source.searched)
    return parse_config_text(source.text, str(source.file), environ=env, searched=source.searched)


def parse_config_text(
    text: str,
    filename: str = "pipectl.toml",
    *,
    environ: Mapping[str, str] | None = None,
    searched: tuple[Path, ...] = (),
) -> LoadedConfig:
    env = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_toml_problem(filename, exc, text)]) from None
    except ValueError:
        # tomllib lets int() refuse numbers of more than sys.get_int_max_str_digits() digits.
        raise ConfigError(
            [
                Problem(
                    filename,
                    _line_matching(text, _HUGE_NUMBER),
                    "",
                    "invalid TOML: a number with thousands of digits",
                )
            ]
        ) from None
    except RecursionError:
        raise ConfigError(
            [
                Problem(
                    filename,
                    _deepest_line(text),
                    "",
                    "invalid TOML: arrays or inline tables nested too deeply",
                )
            ]
        ) from None
    lines = locate_keys(text)
    return _finish(raw, filename, lines, env, searched)


_HUGE_NUMBER = re.compile(r"[0-9_]{1000,}")


def _line_matching(text: str, pattern: re.Pattern[str]) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.search(line):
            return number
    return None


def _deepest_line(text: str) -> int | None:
    """The line where bracket nesting is deepest (strings are not told apart: a hint only)."""
    depth = deepest = 0
    where: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        for char in line:
            if char in "[{":
                depth += 1
                if depth > deepest:
                    deepest, where = depth, number
            elif char in "]}":
                depth -= 1
    return where


def _toml_problem(filename: str, exc: tomllib.TOMLDecodeError, text: str) -> Problem:
    message = str(exc)
    line: int | None = None
    # tomllib ends its messages with "(at line N, column M)" or "(at end of document)".
    marker = "(at line "
    if marker in message:
        head, _, tail = message.rpartition(marker)
        digits = tail.split(",")[0].rstrip(")")
        line = int(digits) if digits.isdigit() else None
        message = head.strip()
    elif message.endswith("(at end of document)"):
        message = message.removesuffix("(at end of document)").strip() + " at the end of the file"
        line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
    return Problem(filename, line, "", f"invalid TOML: {message}")


def _finish(
    raw: dict[str, Any],
    filename: str | None,
    lines: dict[KeyPath, int],
    env: Mapping[str, str],
    searched: tuple[Path, ...],
) -> LoadedConfig:
    label = filename or "<defaults>"
    origins: dict[str, str] = {}
    overrides = env_overrides(raw, env, origins)
    problems = list(_out_of_range_integers(overrides, label, lines))
    refused = {p.path for p in problems}
    try:
        config = Config.model_validate(overrides)
    except ValidationError as exc:
        problems.extend(
            p for p in _pydantic_problems(exc, overrides, label, lines) if p.path not in refused
        )
        config = None
    problems.extend(_semantic_problems(overrides, label, lines))
    # A value taken from the environment is located there, not on a line of the file.
    problems = [
        Problem(origins[p.path], None, p.path, p.message)
        if origins.get(p.path, "").startswith("env ")
        else p
        for p in problems
    ]
    if problems:
        unique = list(dict.fromkeys(problems))
        unique.sort(key=lambda p: (p.line or 0, p.path))
        raise ConfigError(unique)
    assert config is not None
    for path, line in lines.items():
        origins.setdefault(_dotted(path, overrides), f"{label}:{line}")
    return LoadedConfig(
        config=config,
        file=Path(filename) if filename else None,
        origins=origins,
        searched=searched,
    )


def _dotted(path: KeyPath, raw: Mapping[str, Any]) -> str:
    """`steps.<name>.every` where the item has a name, `steps[3].every` otherwise."""
    out: list[str] = []
    node: Any = raw
    for part in path:
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and part < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str) and name:
                out.append(f".{name}")
            else:
                out.append(f"[{part}]")
            node = item
        else:
            out.append(f".{part}" if out else part)
            node = node.get(part) if isinstance(node, dict) else None
    return "".join(out)


# TOML integers are 64-bit (the spec says to refuse what does not fit); tomllib reads any size.
_INT64 = range(-(2**63), 2**63)


def _out_of_range_integers(
    raw: dict[str, Any], label: str, lines: dict[KeyPath, int]
) -> Iterable[Problem]:
    """Integers beyond 64 bits anywhere in the document (walked without recursion: the
    nesting is as deep as tomllib allowed)."""
    stack: list[tuple[KeyPath, Any]] = [((), raw)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            stack.extend(((*path, str(k)), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend(((*path, i), v) for i, v in enumerate(node))
        elif isinstance(node, int) and not isinstance(node, bool) and node not in _INT64:
            yield Problem(
                label,
                line_of(lines, path),
                _dotted(path, raw),
                "number too large: TOML integers are 64-bit"
                " (-9223372036854775808 to 9223372036854775807)",
            )


def _pydantic_problems(
    exc: ValidationError, raw: dict[str, Any], label: str, lines: dict[KeyPath, int]
) -> Iterable[Problem]:
    for error in exc.errors(include_url=False):
        loc = _clean_loc(error["loc"])
        message = _explain(error, raw, loc)
        yield Problem(label, line_of(lines, loc), _dotted(loc, raw), message)


def _clean_loc(loc: tuple[int | str, ...]) -> KeyPath:
    """Drop pydantic's union tag (the check kind, right after `checks[i]`) and validator names
    from locations."""
    out: list[str | int] = []
    for position, part in enumerate(loc):
        if position == 2 and loc[0] == "checks" and isinstance(loc[1], int):
            continue  # the tag: checks[i].<kind>.column is checks[i].column in the file
        if isinstance(part, str) and ("[" in part or part.startswith("function-")):
            continue
        out.append(part)
    return tuple(out)


def _explain(error: Mapping[str, Any], raw: dict[str, Any], loc: KeyPath) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        hint = _nearest_key(raw, loc)
        return f"unknown key {key!r}" + (f"; did you mean {hint!r}?" if hint else "")
    if kind == "missing":
        return "required key is missing"
    if kind == "finite_number":
        return f"expected a finite number, got {error['input']}"
    if kind == "union_tag_invalid":
        got = error.get("ctx", {}).get("tag")
        return f"unknown check kind {got!r}; expected one of {', '.join(CHECK_KINDS.names())}"
    if kind == "union_tag_not_found":
        return f"missing 'kind'; expected one of {', '.join(CHECK_KINDS.names())}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{error['input']!r} is not allowed; expected {expected}"
    if kind in (
        "string_type",
        "int_type",
        "float_type",
        "bool_type",
        "list_type",
        "dict_type",
        "model_type",
    ):
        wanted = {
            "string_type": "text",
            "int_type": "a whole number",
            "float_type": "a number",
            "bool_type": "true or false",
            "list_type": "a list",
            "dict_type": "a table",
            "model_type": "a table",
        }[kind]
        return f"expected {wanted}, got {_toml_type(error['input'])}"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return f"text {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _nearest_key(raw: dict[str, Any], loc: KeyPath) -> str | None:
    model = _model_at(raw, loc[:-1])
    if model is None:
        return None
    matches = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _model_at(raw: dict[str, Any], loc: KeyPath) -> type[BaseModel] | None:
    """Follow a location through the model classes (and the check kind) for key hints."""
    annotation: Any = Config
    node: Any = raw
    for part in loc:
        model = _model_of(annotation, node)
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            annotation = _item_type(annotation)
            continue
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        node = node.get(part) if isinstance(node, dict) else None
    return _model_of(annotation, node)


def _item_type(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list and args:
        return args[0]
    for arg in args:
        if typing.get_origin(arg) is list:
            return typing.get_args(arg)[0]
    return None


def _model_of(annotation: Any, node: Any) -> type[BaseModel] | None:
    """The model class an annotation means for this node (a check's kind picks its class)."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if annotation is CheckBase:  # a check: the model of its kind, when that is known
        return CHECK_KINDS.model(node.get("kind") if isinstance(node, dict) else None) or CheckBase
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    members = [
        a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)
    ]
    kind = node.get("kind") if isinstance(node, dict) else None
    for member in members:
        kinds = (
            typing.get_args(member.model_fields["kind"].annotation)
            if "kind" in member.model_fields
            else ()
        )
        if kind in kinds:
            return member
    return members[0] if len(members) == 1 else None


def _semantic_problems(
    raw: dict[str, Any], label: str, lines: dict[KeyPath, int]
) -> Iterable[Problem]:
    """Cross-item rules, checked on the raw document so they show up with field errors."""
    steps = (
        [s for s in raw.get("steps", []) if isinstance(s, dict)]
        if isinstance(raw.get("steps"), list)
        else []
    )
    checks = (
        [c for c in raw.get("checks", []) if isinstance(c, dict)]
        if isinstance(raw.get("checks"), list)
        else []
    )
    yield from _duplicates("steps", raw.get("steps"), label, lines)
    yield from _duplicates("checks", raw.get("checks"), label, lines)
    step_names = {s.get("name") for s in steps if isinstance(s.get("name"), str)}
    for index, step in enumerate(_items(raw, "steps")):
        if not isinstance(step, dict):
            continue
        deps = step.get("depends_on")
        if not isinstance(deps, list):
            continue
        for position, dep in enumerate(deps):
            if isinstance(dep, str) and dep not in step_names:
                path: KeyPath = ("steps", index, "depends_on", position)
                hint = difflib.get_close_matches(dep, [n for n in step_names if n], n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                yield Problem(
                    label,
                    line_of(lines, path),
                    _dotted(path[:3], raw),
                    f"unknown step {dep!r}{extra}",
                )
            elif dep == step.get("name"):
                path = ("steps", index, "depends_on")
                yield Problem(
                    label,
                    line_of(lines, path),
                    _dotted(path, raw),
                    "a step cannot depend on itself",
                )
    yield from _cycles(raw, label, lines)
    for index, check in enumerate(_items(raw, "checks")):
        if not isinstance(check, dict):
            continue
        step = check.get("step")
        if isinstance(step, str) and step not in step_names:
            path = ("checks", index, "step")
            yield Problem(label, line_of(lines, path), _dotted(path, raw), f"unknown step {step!r}")
    names = {c.get("name") for c in checks if isinstance(c.get("name"), str)}
    yield from _gate_checks(raw, names, label, lines)
    del checks


def _gate_checks(
    raw: dict[str, Any], check_names: set[Any], label: str, lines: dict[KeyPath, int]
) -> Iterable[Problem]:
    """Every check a step's gates name must be configured."""
    known = [n for n in check_names if isinstance(n, str)]
    for index, step in enumerate(_items(raw, "steps")):
        gates = step.get("gates") if isinstance(step, dict) else None
        names = gates.get("checks") if isinstance(gates, dict) else None
        if not isinstance(names, list):
            continue
        for position, name in enumerate(names):
            if isinstance(name, str) and name not in check_names:
                path: KeyPath = ("steps", index, "gates", "checks", position)
                hint = difflib.get_close_matches(name, known, n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                yield Problem(
                    label,
                    line_of(lines, path),
                    _dotted(path[:4], raw),
                    f"unknown check {name!r}{extra}",
                )


def _items(raw: Mapping[str, Any], section: str) -> list[Any]:
    """A section meant to be an array of tables; anything else was reported by pydantic."""
    items = raw.get(section)
    return items if isinstance(items, list) else []


def _duplicates(
    section: str, items: Any, label: str, lines: dict[KeyPath, int]
) -> Iterable[Problem]:
    if not isinstance(items, list):
        return
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            path: KeyPath = (section, index, "name")
            earlier = line_of(lines, (section, first[name], "name"))
            where = f" (first defined on line {earlier})" if earlier else ""
            yield Problem(
                label,
                line_of(lines, path),
                f"{section}[{index}].name",
                f"duplicate name {name!r}{where}",
            )
        else:
            first[name] = index


def _cycles(raw: dict[str, Any], label: str, lines: dict[KeyPath, int]) -> Iterable[Problem]:
    steps = raw.get("steps")
    if not isinstance(steps, list):
        return
    graph: dict[str, list[str]] = {}
    index_of: dict[str, int] = {}
    for index, step in enumerate(steps):
        if isinstance(step, dict) and isinstance(step.get("name"), str):
            deps = step.get("depends_on")
            name = step["name"]
            if name in graph:
                continue
            graph[name] = (
                [d for d in deps if isinstance(d, str) and d != name]
                if isinstance(deps, list)
                else []
            )
            index_of[name] = index
    cycle = find_cycle(graph)
    if cycle:
        start = cycle[0]
        path: KeyPath = ("steps", index_of[start], "depends_on")
        yield Problem(
            label,
            line_of(lines, path),
            _dotted(path, raw),
            "dependency cycle: " + " -> ".join([*cycle, start]),
        )


# ---------------------------------------------------------------------------------------------
# Showing


def effective_items(loaded: LoadedConfig) -> list[tuple[str, str, str]]:
    """(key, value, origin) for every setting, secrets masked, in document order."""
    data = loaded.config.model_dump(mode="json")
    rows: list[tuple[str, str, str]] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            if not node and prefix:
                rows.append((prefix, "{}", loaded.origins.get(prefix, "default")))
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else key, value)
        elif isinstance(node, list) and node and all(isinstance(i, dict) for i in node):
            for index, item in enumerate(node):
                label = item.get("name") if isinstance(item.get("name"), str) else f"[{index}]"
                walk(f"{prefix}.{label}" if not label.startswith("[") else f"{prefix}{label}", item)
        else:
            shown = _show_value(prefix, node)
            rows.append((prefix, shown, loaded.origins.get(prefix, "default")))

    walk("", data)
    return rows


def _show_value(key: str, value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, str) and key in ("database.dsn", "database.replica_dsn", "redis.url"):
        return mask_secret_url(value)
    if isinstance(value, str):
        return value if "\n" not in value else value.strip().replace("\n", " ")
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if not isinstance(value, list) else "[" + ", ".join(map(str, value)) + "]"
