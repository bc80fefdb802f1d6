"""TOML configuration -> one validated model, with `file:line` errors and value origins.

The model is declarative (pydantic v2, strict, unknown keys refused). Everything pydantic cannot
see on its own — duplicate names, dependency cycles, references between steps and checks — is
checked here on the raw document too, so `pipectl config check` reports every problem at once.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import typing
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from pipectl.durations import DurationError, format_duration, parse_duration
from pipectl.identifiers import IdentifierError, Relation, check_name, parse_column
from pipectl.tomlpos import Path as KeyPath
from pipectl.tomlpos import line_of, locate_keys

SEARCH_PATH_ENV = "PIPECTL_CONFIG"
DATABASE_URL_ENV = "PIPECTL_DATABASE_URL"
REDIS_URL_ENV = "PIPECTL_REDIS_URL"


def default_search_paths() -> list[Path]:
    """Where a config file is looked for when neither --config nor PIPECTL_CONFIG says."""
    return [
        Path("pipectl.toml"),
        Path.home() / ".config" / "pipectl" / "config.toml",
        Path("/etc/pipectl/config.toml"),
    ]


# ---------------------------------------------------------------------------------------------
# Field types


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
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
        CronTrigger.from_crontab(value, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
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
        raise ValueError("expected HOST:PORT, such as '127.0.0.1:9187'")
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

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---------------------------------------------------------------------------------------------
# Sections


class DatabaseConfig(Strict):
    dsn: DatabaseUrl | None = None
    connect_timeout: PositiveDuration = timedelta(seconds=10)
    application_name: str = "pipectl"


class RedisConfig(Strict):
    url: RedisUrl | None = None
    timeout: PositiveDuration = timedelta(seconds=2)


class AgentConfig(Strict):
    name: str | None = None
    heartbeat: PositiveDuration = timedelta(seconds=5)
    lost_after: int = Field(default=3, ge=2, le=100)
    metrics_address: Address | None = "127.0.0.1:9187"
    metrics_web_config: str | None = None
    timezone: TimeZone = "UTC"
    max_parallel_runs: int = Field(default=4, ge=1, le=64)
    max_parallel_checks: int = Field(default=4, ge=1, le=64)
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    environment: str = "production"
    shutdown_timeout: PositiveDuration = timedelta(seconds=10)


class RetentionConfig(Strict):
    runs: PositiveDuration = timedelta(days=30)
    results: PositiveDuration = timedelta(days=30)
    samples: PositiveDuration = timedelta(days=90)
    events: PositiveDuration = timedelta(days=90)
    requests: PositiveDuration = timedelta(days=30)


class StepDefaults(Strict):
    statement_timeout: PositiveDuration = timedelta(minutes=5)
    lock_timeout: PositiveDuration = timedelta(seconds=10)
    retries: int = Field(default=3, ge=0, le=20)
    retry_backoff: PositiveDuration = timedelta(seconds=2)
    retry_backoff_max: PositiveDuration = timedelta(minutes=1)
    jitter: Duration = timedelta(0)
    misfire_grace: PositiveDuration = timedelta(minutes=1)


class CheckDefaults(Strict):
    every: PositiveDuration = timedelta(minutes=1)
    timeout: PositiveDuration = timedelta(seconds=10)
    hysteresis: int = Field(default=2, ge=1, le=20)


class StepConfig(Strict):
    """One unit of pipeline work the agent runs: refresh a summary, call a function, or watch."""

    name: Name
    kind: Literal["matview", "sql", "view"]
    relation: RelationName | None = None
    sql: str | None = None
    description: str = ""
    every: PositiveDuration | None = None
    cron: Cron | None = None
    timezone: TimeZone | None = None
    jitter: Duration | None = None
    misfire_grace: PositiveDuration | None = None
    depends_on: list[Name] = Field(default_factory=list)
    statement_timeout: PositiveDuration | None = None
    lock_timeout: PositiveDuration | None = None
    retries: int | None = Field(default=None, ge=0, le=20)
    enabled: bool = True

    @model_validator(mode="after")
    def _shape(self) -> StepConfig:
        if self.every is not None and self.cron is not None:
            raise ValueError("give either 'every' or 'cron', not both")
        if self.kind in ("matview", "view") and self.relation is None:
            raise ValueError(f"a {self.kind} step needs 'relation' (the summary it watches)")
        if self.kind == "sql" and not (self.sql and self.sql.strip()):
            raise ValueError("an sql step needs 'sql' (the statement to run)")
        if self.kind != "sql" and self.sql is not None:
            raise ValueError(f"'sql' is only for kind = \"sql\", not {self.kind!r}")
        return self


# --- checks ----------------------------------------------------------------------------------


class AnomalyConfig(Strict):
    """Robust baseline comparison; see checks/anomaly.py for the maths."""

    method: Literal["mad", "zscore"] = "mad"
    threshold: float | None = Field(default=None, gt=0)
    seasonality: Literal[
        "none", "hour_of_day", "hour_and_daytype", "day_of_week", "hour_of_week"
    ] = "hour_and_daytype"
    min_points: int = Field(default=14, ge=3)
    history: PositiveDuration = timedelta(days=56)
    direction: Literal["both", "up", "down"] = "both"
    min_abs_change: float = Field(default=0.0, ge=0)
    min_rel_change: float = Field(default=0.0, ge=0)
    severity: Literal["warn", "fail"] = "warn"

    @property
    def limit(self) -> float:
        """The score beyond which a point is anomalous: 3.5 for MAD, 3 (sigma) for z-score."""
        if self.threshold is not None:
            return self.threshold
        return 3.5 if self.method == "mad" else 3.0


class Bounds(Strict):
    """Static thresholds; any subset may be given."""

    warn_below: float | None = None
    fail_below: float | None = None
    warn_above: float | None = None
    fail_above: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if None not in (self.warn_below, self.fail_below) and self.fail_below > self.warn_below:  # type: ignore[operator]
            raise ValueError("fail_below must not be above warn_below")
        if None not in (self.warn_above, self.fail_above) and self.fail_above < self.warn_above:  # type: ignore[operator]
            raise ValueError("fail_above must not be below warn_above")
        return self


class Filter(Strict):
    """A bound predicate on one column: `column op value`, the value sent as a parameter."""

    column: ColumnName
    op: Literal["=", "!=", "<", "<=", ">", ">=", "is_null", "not_null", "in"]
    value: float | int | str | bool | list[float | int | str] | None = None


class CheckBase(Strict):
    name: Name
    description: str = ""
    every: PositiveDuration | None = None
    timeout: PositiveDuration | None = None
    hysteresis: int | None = Field(default=None, ge=1, le=20)
    enabled: bool = True


class FreshnessCheck(CheckBase):
    kind: Literal["freshness"]
    table: RelationName
    column: ColumnName
    warn_after: PositiveDuration
    error_after: PositiveDuration
    timezone: TimeZone = "UTC"
    on_empty: Literal["nodata", "fail"] = "nodata"
    step: Name | None = None

    @model_validator(mode="after")
    def _ordered(self) -> FreshnessCheck:
        if self.error_after < self.warn_after:
            raise ValueError("error_after must not be shorter than warn_after")
        return self


class VolumeCheck(CheckBase):
    kind: Literal["volume"]
    table: RelationName
    column: ColumnName
    window: PositiveDuration = timedelta(hours=1)
    timezone: TimeZone = "UTC"
    bounds: Bounds = Bounds()
    anomaly: AnomalyConfig | None = AnomalyConfig()


class MetricCheck(CheckBase):
    kind: Literal["metric"]
    table: RelationName
    time_column: ColumnName
    aggregate: Literal[
        "avg", "sum", "min", "max", "count", "stddev", "p50", "p90", "p95", "p99", "share"
    ]
    column: ColumnName | None = None
    where: list[Filter] = Field(default_factory=list)
    share_of: list[Filter] = Field(default_factory=list)
    window: PositiveDuration = timedelta(hours=1)
    timezone: TimeZone = "UTC"
    bounds: Bounds = Bounds()
    anomaly: AnomalyConfig | None = None

    @model_validator(mode="after")
    def _shape(self) -> MetricCheck:
        if self.aggregate == "share" and not self.share_of:
            raise ValueError("aggregate 'share' needs 'share_of' (the rows to count)")
        if self.aggregate not in ("count", "share") and self.column is None:
            raise ValueError(f"aggregate {self.aggregate!r} needs 'column'")
        return self


class QualityRule(Strict):
    """Exactly one rule per quality check; the check counts the rows that break it."""

    type: Literal["range", "not_null", "unique", "accepted", "references", "json_keys", "custom"]
    column: ColumnName | None = None
    columns: list[ColumnName] = Field(default_factory=list)
    min: float | None = None
    max: float | None = None
    values: list[str | int | float] = Field(default_factory=list)
    ref_table: RelationName | None = None
    ref_column: ColumnName | None = None
    key: str | None = None
    sql: str | None = None
    dimension: Literal["completeness", "accuracy", "consistency"] | None = None

    @model_validator(mode="after")
    def _shape(self) -> QualityRule:
        needs: dict[str, tuple[str, ...]] = {
            "range": ("column",),
            "not_null": ("column",),
            "unique": ("columns",),
            "accepted": ("column", "values"),
            "references": ("column", "ref_table", "ref_column"),
            "json_keys": ("column", "key"),
            "custom": ("sql",),
        }
        missing = [k for k in needs[self.type] if not getattr(self, k)]
        if missing:
            raise ValueError(f"rule type {self.type!r} needs {', '.join(missing)}")
        if self.type == "range" and self.min is None and self.max is None:
            raise ValueError("rule type 'range' needs 'min', 'max' or both")
        return self


class QualityCheck(CheckBase):
    kind: Literal["quality"]
    table: RelationName
    rule: QualityRule
    time_column: ColumnName | None = None
    window: PositiveDuration | None = None
    timezone: TimeZone = "UTC"
    warn_over: float = Field(default=0.0, ge=0)
    fail_over: float | None = Field(default=None, ge=0)
    as_share: bool = False

    @model_validator(mode="after")
    def _window(self) -> QualityCheck:
        if (self.time_column is None) != (self.window is None):
            raise ValueError("'time_column' and 'window' go together: give both or neither")
        return self


class SchemaCheck(CheckBase):
    kind: Literal["schema"]
    tables: list[RelationName] = Field(min_length=1)
    on_change: Literal["warn", "fail"] = "warn"
    accept_after: PositiveDuration = timedelta(days=1)


class CacheCheck(CheckBase):
    kind: Literal["cache"]
    source: Literal["redis", "postgres", "app"]
    tables: list[RelationName] = Field(default_factory=list)
    table: RelationName | None = None
    column: ColumnName | None = None
    time_column: ColumnName | None = None
    window: PositiveDuration = timedelta(minutes=15)
    warn_below: Ratio | None = None
    fail_below: Ratio | None = None
    min_requests: int = Field(default=20, ge=0)

    @model_validator(mode="after")
    def _shape(self) -> CacheCheck:
        if self.source == "app" and self.table is None:
            raise ValueError(
                "source 'app' needs 'table' (where each request records its cache level)"
            )
        if self.source == "app" and (self.column is None or self.time_column is None):
            raise ValueError(
                "source 'app' needs 'column' (the cache level) and 'time_column' (when)"
            )
        if self.source != "app" and self.table is not None:
            raise ValueError(f"'table' is only for source 'app', not {self.source!r}")
        if self.source != "postgres" and self.tables:
            raise ValueError(f"'tables' is only for source 'postgres', not {self.source!r}")
        if None not in (self.warn_below, self.fail_below) and self.fail_below > self.warn_below:  # type: ignore[operator]
            raise ValueError("fail_below must not be above warn_below")
        return self

    def thresholds(self) -> tuple[float, float]:
        """Warn and fail floors, defaulting to the targets in the checks issue."""
        warn, fail = (0.95, 0.90) if self.source == "postgres" else (0.80, 0.50)
        return (
            self.warn_below if self.warn_below is not None else warn,
            self.fail_below if self.fail_below is not None else fail,
        )


CheckConfig = Annotated[
    FreshnessCheck | VolumeCheck | MetricCheck | QualityCheck | SchemaCheck | CacheCheck,
    Field(discriminator="kind"),
]
CHECK_KINDS = ("freshness", "volume", "metric", "quality", "schema", "cache")


class Config(Strict):
    database: DatabaseConfig = DatabaseConfig()
    redis: RedisConfig = RedisConfig()
    agent: AgentConfig = AgentConfig()
    retention: RetentionConfig = RetentionConfig()
    defaults: StepDefaults = StepDefaults()
    check_defaults: CheckDefaults = CheckDefaults()
    steps: list[StepConfig] = Field(default_factory=list)
    checks: list[CheckConfig] = Field(default_factory=list)

    def step(self, name: str) -> StepConfig:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def check(
        self, name: str
    ) -> FreshnessCheck | VolumeCheck | MetricCheck | QualityCheck | SchemaCheck | CacheCheck:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file, located as precisely as the file allows."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every reason found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class LoadedConfig:
    """The validated config and where each of its values came from."""

    config: Config
    file: Path | None
    origins: Mapping[str, str] = field(default_factory=dict)
    searched: tuple[Path, ...] = ()

    @property
    def database_dsn(self) -> str | None:
        return self.config.database.dsn

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


def find_config_file(explicit: str | os.PathLike[str] | None) -> tuple[Path | None, list[Path]]:
    """Apply the search order; an explicit or env-given file must exist."""
    if explicit is not None:
        return Path(explicit), [Path(explicit)]
    env = os.environ.get(SEARCH_PATH_ENV)
    if env:
        return Path(env), [Path(env)]
    candidates = default_search_paths()
    for candidate in candidates:
        if candidate.is_file():
            return candidate, candidates
    return None, candidates


def load_config(
    explicit: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    require_file: bool = False,
) -> LoadedConfig:
    """Find, read and validate the config; raise ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    if explicit is None and env.get(SEARCH_PATH_ENV):
        explicit = env[SEARCH_PATH_ENV]
    path, searched = find_config_file(explicit)
    if path is None:
        if require_file:
            looked = ", ".join(str(p) for p in searched)
            raise ConfigError(
                [
                    Problem(
                        "pipectl",
                        None,
                        "",
                        f"no config file found (looked in {looked}); copy config.example.toml "
                        "to ./pipectl.toml or pass --config FILE",
                    )
                ]
            )
        return _finish({}, None, {}, env, tuple(searched))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(str(path), None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(str(path), None, "", f"cannot read: {exc}")]) from None
    return parse_config_text(text, str(path), environ=env, searched=tuple(searched))


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
    overrides = _env_overrides(raw, env, origins)
    problems: list[Problem] = []
    try:
        config = Config.model_validate(overrides)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, overrides, label, lines))
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


def _env_overrides(
    raw: dict[str, Any], env: Mapping[str, str], origins: dict[str, str]
) -> dict[str, Any]:
    """Environment beats the file for connection settings (twelve-factor style)."""
    data = {key: value for key, value in raw.items()}
    for section, key, var in (
        ("database", "dsn", DATABASE_URL_ENV),
        ("redis", "url", REDIS_URL_ENV),
    ):
        value = env.get(var)
        if value:
            table = dict(data.get(section) or {}) if isinstance(data.get(section), dict) else {}
            table[key] = value
            data[section] = table
            origins[f"{section}.{key}"] = f"env {var}"
    database = data.get("database")
    if not (isinstance(database, dict) and "dsn" in database) and any(
        env.get(v) for v in ("PGHOST", "PGDATABASE", "PGUSER", "PGPORT", "PGSERVICE")
    ):
        origins["database.dsn"] = "libpq environment (PGHOST, PGUSER, ...)"
    return data


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


def _pydantic_problems(
    exc: ValidationError, raw: dict[str, Any], label: str, lines: dict[KeyPath, int]
) -> Iterable[Problem]:
    for error in exc.errors(include_url=False):
        loc = _clean_loc(error["loc"])
        message = _explain(error, raw, loc)
        yield Problem(label, line_of(lines, loc), _dotted(loc, raw), message)


def _clean_loc(loc: tuple[int | str, ...]) -> KeyPath:
    """Drop pydantic's union tags (the check kind) and validator names from locations."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, str) and (
            part in CHECK_KINDS or "[" in part or part.startswith("function-")
        ):
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
    if kind == "union_tag_invalid":
        got = error.get("ctx", {}).get("tag")
        return f"unknown check kind {got!r}; expected one of {', '.join(CHECK_KINDS)}"
    if kind == "union_tag_not_found":
        return f"missing 'kind'; expected one of {', '.join(CHECK_KINDS)}"
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
    del checks


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


def find_cycle(graph: Mapping[str, list[str]]) -> list[str] | None:
    """One cycle in a name -> upstream names graph, in order, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


# ---------------------------------------------------------------------------------------------
# Showing


# libpq keywords whose values are secrets (key=value strings and URL query parameters).
SECRET_KEYWORDS = frozenset({"password", "sslpassword"})
MASK = "****"
_SECRET_QUERY = re.compile(r"(?i)(^|[?&;])((?:ssl)?password)=[^&#]*")


def mask_secret_url(value: str) -> str:
    """The connection string with every credential libpq or redis-py accepts masked: the
    password of a URL's user info, `password=` and `sslpassword=` query parameters, and the
    same keywords of a libpq key=value string (quoted or not). Masks more rather than less
    when the string cannot be parsed."""
    if "://" not in value:
        return _mask_conninfo(value)
    scheme, _, rest = value.partition("://")
    return f"{scheme}://{_mask_query(_mask_userinfo(rest))}"


def _mask_userinfo(rest: str) -> str:
    """`user:password@hosts...` -> `user:****@hosts...`. A password holding an unencoded
    '/', '?', '#' or '@' is still masked up to the last '@' that could end it."""
    authority_end = len(rest)
    for stop in "/?#":
        position = rest.find(stop)
        if position != -1:
            authority_end = min(authority_end, position)
    at = rest.rfind("@", 0, authority_end)
    if at == -1:
        colon = rest.find(":", 0, authority_end)
        later_at = rest.rfind("@")
        if colon == -1 or later_at == -1:
            return rest
        at = later_at  # 'user:pa/ss@host': the authority ended early, inside the password
    userinfo = rest[:at]
    if ":" not in userinfo:
        return rest
    return userinfo.split(":", 1)[0] + ":" + MASK + rest[at:]


def _mask_query(rest: str) -> str:
    path, question, query = rest.partition("?")
    if not question:
        return rest
    return path + "?" + _SECRET_QUERY.sub(lambda m: f"{m.group(1)}{m.group(2)}={MASK}", query)


_CONNINFO_KEY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")


def _mask_conninfo(value: str) -> str:
    """A libpq key=value string: values may be single-quoted (with \\ and \\' escapes) or
    bare (backslash escapes a character). Unparseable from some point: masked from there."""
    out: list[str] = []
    position = 0
    while position < len(value):
        match = _CONNINFO_KEY.match(value, position)
        if match is None:
            if value[position:].strip():
                out.append(value[position:] if not _mentions_secret(value[position:]) else MASK)
            else:
                out.append(value[position:])
            break
        end = _value_end(value, match.end())
        out.append(match.group(0))
        secret = match.group(1).lower() in SECRET_KEYWORDS
        if end is None:  # an unterminated quote: nothing after it is safe to show
            tail = value[match.end() :]
            out.append(MASK if secret or _mentions_secret(tail) else tail)
            break
        out.append(MASK if secret else value[match.end() : end])
        position = end
    return "".join(out)


def _value_end(text: str, start: int) -> int | None:
    """Where a conninfo value starting at `start` ends (after its closing quote, or at the
    first unescaped whitespace); None when a quote never closes."""
    position = start
    if position < len(text) and text[position] == "'":
        position += 1
        while position < len(text):
            if text[position] == "\\":
                position += 2
            elif text[position] == "'":
                return position + 1
            else:
                position += 1
        return None
    while position < len(text) and not text[position].isspace():
        position += 2 if text[position] == "\\" else 1
    return min(position, len(text))


def _mentions_secret(text: str) -> bool:
    return any(keyword in text.lower() for keyword in SECRET_KEYWORDS)


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
    if isinstance(value, str) and key in ("database.dsn", "redis.url"):
        return mask_secret_url(value)
    if isinstance(value, str):
        return value if "\n" not in value else value.strip().replace("\n", " ")
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if not isinstance(value, list) else "[" + ", ".join(map(str, value)) + "]"
