"""Gates: checks on a step's new content, evaluated inside the refresh's transaction.

The runner measures the previous content (`measure_before`) before it refreshes, runs the
refresh, then evaluates the gates (`evaluate`) on the new content, all in one transaction:
other sessions keep reading the old content until COMMIT. Any failing gate makes the runner
roll back and record the run as held, with each gate's value and the previous value.

Built-in gates measure one relation (the step's summary, or `gates.relation`):
  row_count  new rows / previous rows within [min_ratio, max_ratio]
  not_null   no row with NULL in any of the listed columns
  groups     previous groups (distinct `keys`) missing from the new content <= max_lost
Configured checks named in `gates.checks` run through the check engine on the same
connection (behind a savepoint each): fail or error holds, warn and ok pass.

Everything is an aggregate computed by PostgreSQL: no row of the summary reaches Python. The
previous groups are kept in a temporary table dropped with the transaction.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from pipectl import store
from pipectl.config import GatesConfig, StepConfig
from pipectl.identifiers import Relation, quote_ident
from pipectl.model import CheckStatus
from pipectl.resilience import describe_error
from pipectl.store.base import Conn

if TYPE_CHECKING:
    from pipectl.checks.engine import CheckEngine

log = logging.getLogger(__name__)

# The temporary table holding the previous content's groups (ON COMMIT DROP; a rollback
# drops it too).
_PREVIOUS_GROUPS = "pg_temp.pipectl_gate_previous_groups"


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict on the new content, kept in the run's detail."""

    gate: str
    passed: bool
    value: float | None
    previous: float | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Before:
    """The previous content, as the built-in gates need it."""

    populated: bool
    rows: int | None = None
    null_rows: int | None = None
    groups: int | None = None
    problem: str | None = None
    """Why the previous content could not be measured (a missing relation or column)."""


def has_gates(step: StepConfig) -> bool:
    return step.gates is not None and (step.gates.builtin or bool(step.gates.checks))


async def measure_before(conn: Conn, step: StepConfig, *, within: float) -> Before | None:
    """The previous content of the gated relation (None: the step has no built-in gates)."""
    gates = step.gates
    relation = step.gated_relation
    if gates is None or relation is None:
        return None
    shape = await conn.fetchrow(
        """
        SELECT c.relkind, c.relispopulated,
               array(SELECT a.attname::text FROM pg_attribute a
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
                 AS columns
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relname = $2
        """,
        relation.schema,
        relation.name,
        timeout=within,
    )
    if shape is None:
        return Before(False, problem=f"{relation} does not exist")
    wanted = [*gates.not_null, *(gates.groups.keys if gates.groups else [])]
    missing = [c for c in wanted if c not in shape["columns"]]
    if missing:
        return Before(False, problem=f"{relation} has no column {', '.join(missing)}")
    if not shape["relispopulated"]:
        return Before(False)
    rows, nulls = await _counts(conn, relation, gates, within)
    groups = None
    if gates.groups is not None:
        keys = ", ".join(quote_ident(k) for k in gates.groups.keys)
        await conn.execute(
            f"CREATE TEMPORARY TABLE {_PREVIOUS_GROUPS} ON COMMIT DROP AS"
            f" SELECT DISTINCT {keys} FROM {relation.sql}",
            timeout=within,
        )
        groups = await conn.fetchval(f"SELECT count(*) FROM {_PREVIOUS_GROUPS}", timeout=within)
    return Before(True, rows, nulls, groups)


async def evaluate(
    conn: Conn,
    step: StepConfig,
    before: Before | None,
    *,
    within: float,
    checks: CheckEngine | None,
) -> list[GateResult]:
    """Every gate of `step` on the content the transaction now holds, built-ins first."""
    gates = step.gates
    if gates is None:
        return []
    results: list[GateResult] = []
    relation = step.gated_relation
    if relation is not None and before is not None:
        try:
            async with conn.transaction():  # a savepoint: a failed probe leaves the run usable
                results.extend(await _builtin(conn, relation, gates, before, within))
        except asyncpg.PostgresError as exc:
            results.append(
                GateResult(
                    "built-in gates", False, None, None, f"not evaluated: {describe_error(exc)}"
                )
            )
    for name in gates.checks:
        results.append(await _check_gate(conn, name, checks))
    return results


def held_message(results: list[GateResult]) -> str | None:
    """ "held: <why>" for the gates that failed; None when all passed."""
    failed = [r.message for r in results if not r.passed]
    return "held: " + "; ".join(failed) if failed else None


# --------------------------------------------------------------------------- built-in gates


async def _counts(
    conn: Conn, relation: Relation, gates: GatesConfig, within: float
) -> tuple[int, int | None]:
    """Rows, and rows with a NULL in a not_null column (None without such columns): one scan."""
    nulls = (
        "count(*) FILTER (WHERE "
        + " OR ".join(f"{quote_ident(c)} IS NULL" for c in gates.not_null)
        + ")"
        if gates.not_null
        else "NULL::bigint"
    )
    row = await conn.fetchrow(f"SELECT count(*), {nulls} FROM {relation.sql}", timeout=within)
    assert row is not None
    return int(row[0]), (int(row[1]) if row[1] is not None else None)


async def _builtin(
    conn: Conn, relation: Relation, gates: GatesConfig, before: Before, within: float
) -> list[GateResult]:
    if before.problem is not None:
        return [GateResult("built-in gates", False, None, None, f"not evaluated: {before.problem}")]
    rows, nulls = await _counts(conn, relation, gates, within)
    out: list[GateResult] = []
    if gates.row_count is not None:
        out.append(_row_count(relation, gates, before, rows))
    if gates.not_null:
        columns = ", ".join(gates.not_null)
        ok = not nulls
        out.append(
            GateResult(
                "not_null",
                ok,
                nulls,
                before.null_rows,
                f"{relation.name}: no NULL in {columns}"
                if ok
                else f"{relation.name}: {nulls} of {rows} rows have NULL in {columns}",
            )
        )
    if gates.groups is not None:
        out.append(await _groups(conn, relation, gates, before, within))
    return out


def _row_count(relation: Relation, gates: GatesConfig, before: Before, rows: int) -> GateResult:
    bound = gates.row_count
    assert bound is not None
    previous = before.rows
    what = f"{relation.name} rows {_n(previous)} → {rows}"
    if not previous:
        return GateResult(
            "row_count", True, rows, previous, f"{what} (no previous content to compare)"
        )
    ratio = rows / previous
    if bound.min_ratio is not None and ratio < bound.min_ratio:
        return GateResult(
            "row_count",
            False,
            rows,
            previous,
            f"{what}, below {_percent(bound.min_ratio)} of the previous content",
        )
    if bound.max_ratio is not None and ratio > bound.max_ratio:
        return GateResult(
            "row_count",
            False,
            rows,
            previous,
            f"{what}, above {_percent(bound.max_ratio)} of the previous content",
        )
    return GateResult("row_count", True, rows, previous, f"{what} ({_percent(ratio)})")


async def _groups(
    conn: Conn, relation: Relation, gates: GatesConfig, before: Before, within: float
) -> GateResult:
    groups = gates.groups
    assert groups is not None
    keys = ", ".join(quote_ident(k) for k in groups.keys)
    label = f"{relation.name} groups ({', '.join(groups.keys)})"
    previous = before.groups
    if not previous:
        return GateResult("groups", True, 0, previous, f"{label}: no previous groups to lose")
    lost = int(
        await conn.fetchval(
            f"SELECT count(*) FROM (SELECT {keys} FROM {_PREVIOUS_GROUPS}"
            f" EXCEPT SELECT {keys} FROM {relation.sql}) lost",
            timeout=within,
        )
    )
    share = lost / previous
    text = f"{label}: {lost} of {previous} lost"
    if share > groups.max_lost:
        limit = "none may go" if groups.max_lost == 0 else f"limit {_percent(groups.max_lost)}"
        return GateResult("groups", False, lost, previous, f"{text} ({_percent(share)}; {limit})")
    return GateResult("groups", True, lost, previous, text)


# --------------------------------------------------------------------------- check gates


async def _check_gate(conn: Conn, name: str, engine: CheckEngine | None) -> GateResult:
    gate = f"check {name}"
    if engine is None:
        return GateResult(
            gate, False, None, None, f"check {name}: not evaluated (no checks loaded)"
        )
    try:
        result = await engine.run(name, conn, redis=None, trigger="manual", now=datetime.now(UTC))
    except KeyError:
        return GateResult(gate, False, None, None, f"check {name}: not configured")
    # The previous value: what the check last recorded, on the published content.
    states = await store.check_states(conn, [name])
    previous = states[0].last_value if states else None
    passed = result.status not in (CheckStatus.FAIL, CheckStatus.ERROR)
    return GateResult(
        gate, passed, result.value, previous, f"check {name} {result.status}: {result.message}"
    )


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.0f} %"
