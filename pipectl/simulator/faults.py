"""The faults the simulator can inject: their names, parameters and effects on activity.

A fault is validated once, when injected (names and parameters are checked here, the lock's
relation against the catalog by the simulator), and then read many times per second as an
immutable `Effects` snapshot by the code that writes rows and talks to Redis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipectl.identifiers import IdentifierError, Relation
from pipectl.simulator.rhythm import FEED_NAMES

ALL_FEEDS = "all"
DEFAULT_LOCK_RELATION = "public.rule_effectiveness_summary"


class FaultError(ValueError):
    """A fault that cannot be injected as asked; the message says why."""


class UnknownFaultError(FaultError):
    """A fault name that does not exist; the message lists the valid ones."""

    def __init__(self, name: object) -> None:
        super().__init__(f"unknown fault {name!r}; valid faults: {', '.join(FAULTS)}")
        self.name = name


def _table(value: Any) -> str:
    if not isinstance(value, str) or value not in (*FEED_NAMES, ALL_FEEDS):
        raise FaultError(
            f"table must be one of {', '.join(FEED_NAMES)} or {ALL_FEEDS!r}, got {value!r}"
        )
    return value


def _number(low: float, high: float, *, low_open: bool = False) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise FaultError(f"expected a number, got {value!r}") from None
        too_low = number <= low if low_open else number < low
        if not math.isfinite(number) or too_low or number > high:  # NaN compares as in range
            raise FaultError(f"{number:g} is out of range ({low:g}..{high:g})")
        return number

    return parse


def _revision(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 32 or not value.isprintable():
        raise FaultError(f"version must be 1 to 32 printable characters, got {value!r}")
    return value


def _relation(value: Any) -> str:
    if not isinstance(value, str):
        raise FaultError(f"relation must be a name such as {DEFAULT_LOCK_RELATION}")
    try:
        return str(Relation.parse(value))
    except IdentifierError as exc:
        raise FaultError(str(exc)) from None


@dataclass(frozen=True)
class Param:
    """One parameter of a fault: its default (None = optional, no default) and parser."""

    help: str
    parse: Callable[[Any], Any]
    default: Any = None


@dataclass(frozen=True)
class FaultSpec:
    name: str
    description: str
    params: dict[str, Param] = field(default_factory=dict)


FAULTS: dict[str, FaultSpec] = {
    spec.name: spec
    for spec in (
        FaultSpec(
            "stall",
            "stop writing to one table (or all): its freshness goes stale",
            {"table": Param(f"table to stall, or '{ALL_FEEDS}'", _table, default="user_feedback")},
        ),
        FaultSpec(
            "spike",
            "volume spike: activity multiplied by a factor (x10 by default)",
            {
                "factor": Param("rate multiplier (> 1)", _number(1, 1000, low_open=True), 10.0),
                "table": Param("only this table, or all", _table, ALL_FEEDS),
            },
        ),
        FaultSpec(
            "drop",
            "volume drop: activity down to about 5 %",
            {
                "factor": Param("rate multiplier (< 1)", _number(0, 0.99), 0.05),
                "table": Param("only this table, or all", _table, ALL_FEEDS),
            },
        ),
        FaultSpec(
            "out_of_range",
            "values outside their valid range where no CHECK prevents it (negative or huge "
            "execution times, response times over 29999 ms, cache level 'L9', unknown rule "
            "ids, applied_rules elements without rule_id, scores above 1)",
            {"share": Param("share of new rows affected", _number(0, 1, low_open=True), 0.3)},
        ),
        FaultSpec(
            "nulls",
            "NULLs where values belong (user_rating, confidence_level, prompt_type, "
            "cache_hit_level, ...)",
            {"share": Param("share of new rows affected", _number(0, 1, low_open=True), 0.5)},
        ),
        FaultSpec(
            "cache_miss_storm",
            "Redis lookups of keys that do not exist: misses dominate, and MISS dominates "
            "prompt_improvement_sessions.cache_hit_level",
        ),
        FaultSpec(
            "deploy",
            "a deploy: the application's migration bumps alembic_version to a new revision "
            "(the schema_version check records it and compares the checks before and after)",
            {"version": Param("the new revision (default: a fresh one)", _revision)},
        ),
        FaultSpec(
            "broken_input",
            "an input breaks: rule_performance keeps only a few rules (the rows of the others"
            " in the last 31 days are set aside, and new rows of them are not written), so"
            " rule_effectiveness_summary loses most of its rows and its gates hold the"
            " refresh; clearing the fault puts the rows back",
            {"keep": Param("rules that keep their rows (1-100)", _number(1, 100), 3)},
        ),
        FaultSpec(
            "lock",
            "hold a lock on a summary in an open transaction (LOCK TABLE ... IN EXCLUSIVE "
            "MODE on a table; ANALYZE on a materialized view, which LOCK TABLE refuses), so "
            "REFRESH MATERIALIZED VIEW CONCURRENTLY waits (and fails with a lock_timeout)",
            {"relation": Param("relation to lock", _relation, DEFAULT_LOCK_RELATION)},
        ),
    )
}


def validate_name(name: object) -> str:
    """The name itself, if it is a known fault."""
    if not isinstance(name, str) or name not in FAULTS:
        raise UnknownFaultError(name)
    return name


def validate(name: object, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check a fault name and its parameters; return every parameter with defaults applied."""
    spec = FAULTS[validate_name(name)]
    given = dict(params or {})
    unknown = sorted(set(given) - set(spec.params))
    if unknown:
        accepted = ", ".join(spec.params) or "no parameters"
        raise FaultError(f"fault {name!r} does not take {', '.join(unknown)} (it takes {accepted})")
    result: dict[str, Any] = {}
    for key, param in spec.params.items():
        value = given.get(key)
        if value is None:
            result[key] = param.default
            continue
        try:
            result[key] = param.parse(value)
        except FaultError as exc:
            raise FaultError(f"fault {name!r}, {key}: {exc}") from None
    return result


@dataclass(frozen=True)
class ActiveFault:
    name: str
    params: dict[str, Any]
    started_at: datetime
    expires_at: datetime | None

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.params.items())
        until = self.expires_at.isoformat(timespec="seconds") if self.expires_at else "cleared"
        return f"{self.name}({shown}) until {until}"


@dataclass(frozen=True)
class Effects:
    """What the active faults do to activity, at one moment."""

    stalled: frozenset[str] = frozenset()
    volume: Mapping[str, float] = field(default_factory=dict)  # table or ALL_FEEDS -> factor
    out_of_range: float = 0.0  # share of rows with out-of-range values
    nulls: float = 0.0  # share of rows with NULLs
    miss_storm: bool = False

    def is_stalled(self, table: str) -> bool:
        return ALL_FEEDS in self.stalled or table in self.stalled

    def volume_for(self, table: str) -> float:
        return self.volume.get(ALL_FEEDS, 1.0) * self.volume.get(table, 1.0)

    @property
    def cache_volume(self) -> float:
        """Cache traffic follows request volume: only spikes and drops of all feeds count."""
        return self.volume.get(ALL_FEEDS, 1.0)


def effects_of(faults: Mapping[str, ActiveFault], now: datetime) -> Effects:
    """The combined effect of the faults still active at `now`."""
    live = [f for f in faults.values() if f.expires_at is None or f.expires_at > now]
    stalled: set[str] = set()
    volume: dict[str, float] = {}
    out_of_range = nulls = 0.0
    storm = False
    for fault in live:
        if fault.name == "stall":
            stalled.add(fault.params["table"])
        elif fault.name in ("spike", "drop"):
            table = fault.params["table"]
            volume[table] = volume.get(table, 1.0) * fault.params["factor"]
        elif fault.name == "out_of_range":
            out_of_range = fault.params["share"]
        elif fault.name == "nulls":
            nulls = fault.params["share"]
        elif fault.name == "cache_miss_storm":
            storm = True
    return Effects(frozenset(stalled), volume, out_of_range, nulls, storm)
