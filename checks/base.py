"""What every check kind shares: the run context and the shape of a kind's module.

A kind is one module exporting `KIND`, a `KindSpec`: its config model (a `CheckBase` with
`kind: Literal["<kind>"]`), what it needs from the catalog, the SQL it shows, and `run`, which
probes (one SQL round trip) and hands the observation to a pure evaluation function. The engine
adds validation, the transaction with its statement_timeout, error handling and timing around
it, so a kind only says what is particular to it. `checks/registry.py` lists the kinds.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from zoneinfo import ZoneInfo

from pipectl.checks.catalog import Catalog, Need, Table
from pipectl.config import CheckBase, Config, kind_of
from pipectl.identifiers import Relation
from pipectl.model import CheckResult, CheckStatus, Sample
from pipectl.store.base import Conn

if TYPE_CHECKING:
    from redis.asyncio import Redis

C = TypeVar("C", bound=CheckBase)

SOURCE_BY_TRIGGER = {"schedule": "live", "manual": "manual", "cli": "manual"}


@dataclass(frozen=True)
class Context(Generic[C]):
    """Everything one run of one check may use."""

    check: C
    config: Config
    conn: Conn
    now: datetime
    source: str
    """Sample source for this run: 'live' on schedule, 'manual' for manual and CLI runs."""
    catalog: Catalog
    timeout: timedelta
    redis: Redis | None = None

    def table(self, relation: Relation) -> Table:
        return self.catalog.table(relation)


def _alone(check: Any) -> Hashable | None:
    return None


@dataclass(frozen=True)
class Ride(Generic[C]):
    """How a check of this kind is answered by a scan another kind shares (its `run_shared`)
    instead of a probe of its own: a volume count is one more column of its table's scan."""

    host_key: Callable[[C], Hashable | None]
    """The engine's share key ((kind, key)) of the scans that can answer the check; None:
    this one always probes alone."""
    columns: Callable[[C, Any, datetime], list[str]]
    """Aggregates over the host scan's rows (given its `checks.sql.Params` and `now`), each
    a count: a scan split in slices sums them."""
    finish: Callable[[Context[C], Sequence[int]], Awaitable[CheckResult]]
    """The check's result from those counts, in the host's probe transaction."""


@dataclass(frozen=True)
class Riding:
    """A check answered by a host's shared scan, and how (its kind's `Ride`)."""

    check: CheckBase
    ride: Ride[Any]


@dataclass(frozen=True)
class KindSpec(Generic[C]):
    """One check kind: the engine's registry maps `kind` to this."""

    model: type[C]
    """The kind's config model; its `kind` literal names the kind."""
    needs: Callable[[C], list[Need]]
    """Relations and columns to validate against the catalog."""
    sql: Callable[[C, Config], str]
    """The probe SQL shown in the console."""
    target: Callable[[C], str]
    describe: Callable[[C], str]
    run: Callable[[Context[C]], Awaitable[CheckResult]]
    check_values: Callable[[C, Catalog], list[tuple[str, str]]] = field(
        default=lambda check, catalog: []
    )
    """Further (path, message) problems once the catalog is known, e.g. filter values."""
    check_config: Callable[[C, Config], list[tuple[str, str]]] = field(
        default=lambda check, config: []
    )
    """Further (path, message) problems against the rest of the config, e.g. what kind of
    step a check names."""
    share_key: Callable[[C], Hashable | None] = _alone
    """Checks of this kind with equal keys read the same rows, so `run_shared` can answer
    them from one probe; None for a check that always probes alone."""
    run_shared: (
        Callable[[Context[C], Sequence[C], Sequence[Riding]], Awaitable[list[CheckResult]]] | None
    ) = None
    """Results of several checks of one share key from one probe, in order (ctx.check is the
    first of them), then those of the checks of other kinds riding that probe (`Ride`);
    raises like `run`."""
    ride: Ride[C] | None = None
    """How this kind's checks ride another kind's shared scan; None: they never do."""

    @property
    def kind(self) -> str:
        return kind_of(self.model)


def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def finite(value: float | None) -> float | None:
    """None for NaN/infinity: jsonb and reports cannot hold them."""
    if value is None or not math.isfinite(value):
        return None
    return value


def point(
    series: str,
    ts: datetime,
    value: float,
    source: str,
    *,
    anomaly: bool = False,
    labels: dict[str, Any] | None = None,
) -> Sample:
    return Sample(series, ts, float(value), labels or {}, source, anomaly)


def worse(a: CheckStatus, b: CheckStatus) -> CheckStatus:
    return a if a.severity >= b.severity else b


def number(value: float | None) -> str:
    """A value for messages: short and readable (aggregates, never row content)."""
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value)}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 0.001 else f"{value:.3f}".rstrip("0").rstrip(".")
