"""Incremental summaries in the database: install a step, refresh it, read where it is.

`install` (run by `pipectl db incremental STEP`, as the owner of the summary) replaces the
summary (a materialized or plain view) by a table of the same name and columns, creates the
step's state table in the schema pipectl_incremental and registers the step in
pipectl.incremental_steps; with `triggers` it also puts the invalidation triggers on the
source table. `refresh` (the agent, inside the run's transaction) recomputes the buckets that
changed, drops the buckets that left the window and applies the difference to the summary.
The SQL text comes from pipectl.incremental."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from pipectl import incremental as sql
from pipectl.config import StepConfig
from pipectl.identifiers import Relation, quote_ident
from pipectl.store.base import Conn

STATE_SCHEMA = "pipectl_incremental"
TIME_TYPES = ("timestamp without time zone", "timestamp with time zone")
TRIGGER_EVENTS = ("insert", "update", "delete", "truncate")
MAX_RANGES = 32
"""Invalidated ranges recomputed one by one; beyond this, the closest are merged."""


class IncrementalError(Exception):
    """An incremental step cannot run or be installed as it is (the message says why and what
    to do)."""


@dataclass(frozen=True)
class Refreshed:
    """What a refresh did: `rows` in the summary, raw rows read against rows that arrived
    (time at or after the previous watermark), groups deleted and inserted."""

    rows: int
    rows_read: int
    rows_arrived: int
    buckets: int
    invalidations: int
    deleted: int
    inserted: int
    reference_time: datetime
    full: bool
    warnings: list[str] = field(default_factory=list)

    def detail(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "rows_arrived": self.rows_arrived,
            "buckets_recomputed": self.buckets,
            "invalidations": self.invalidations,
            "groups_deleted": self.deleted,
            "groups_inserted": self.inserted,
            "reference_time": self.reference_time.isoformat(),
            "full_rebuild": self.full,
            **({"warnings": self.warnings} if self.warnings else {}),
        }


def state_table_name(step: str) -> str:
    name = f"inc_{step}"
    if len(name.encode()) <= 63:
        return name
    return f"inc_{step[:40]}_{hashlib.sha256(step.encode()).hexdigest()[:10]}"


def minutes_table_name(state_table: str) -> str:
    """The table of a step's minute states, beside its state table `state_table`."""
    name = f"{state_table}_minutes"
    if len(name.encode()) <= 63:
        return name
    return f"inc_{hashlib.sha256(state_table.encode()).hexdigest()[:20]}_minutes"


def trigger_name(event: str, column: str) -> str:
    name = f"pipectl_invalidate_{event}_{column}"
    if len(name.encode()) <= 63:
        return name
    return f"pipectl_invalidate_{event}_{hashlib.sha256(column.encode()).hexdigest()[:12]}"


async def published_at(conn: Conn, step: StepConfig) -> datetime | None:
    """The reference time (the refresh's now()) of the summary content currently published:
    `defining_query(step)` with $1 = this gives the same rows. None: never refreshed (or the
    step is not installed)."""
    if await conn.fetchval("SELECT to_regclass('pipectl.incremental_steps')") is None:
        return None
    value: datetime | None = await conn.fetchval(
        "SELECT published_at FROM pipectl.incremental_steps WHERE step = $1", step.name
    )
    return value


class Installed(Enum):
    """Whether a step is installed as an incremental summary, and as it is defined now."""

    NO = "no"
    AS_DEFINED = "as defined"
    OUTDATED = "outdated"
    """Installed with another definition or an older state format: its refresh asks for
    `pipectl db incremental` again."""


async def installed(conn: Conn, step: StepConfig) -> Installed:
    """How the step is installed (whether pipectl's table of incremental steps exists, then
    the step's signature in it)."""
    assert step.incremental is not None
    if await conn.fetchval("SELECT to_regclass('pipectl.incremental_steps')") is None:
        return Installed.NO
    found = await conn.fetchval(
        "SELECT signature FROM pipectl.incremental_steps WHERE step = $1", step.name
    )
    if found is None:
        return Installed.NO
    return Installed.AS_DEFINED if found == sql.signature(step.incremental) else Installed.OUTDATED


async def triggers_installed(conn: Conn, step: StepConfig) -> bool:
    """Whether the source carries the invalidation triggers for the step's time column."""
    inc = sql.config_of(step)
    found = await conn.fetchval(
        """
        SELECT count(*) FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relname = $2 AND t.tgname = ANY($3) AND t.tgenabled <> 'D'
        """,
        inc.source.schema,
        inc.source.name,
        [trigger_name(e, inc.time_column) for e in TRIGGER_EVENTS],
    )
    return bool(found == len(TRIGGER_EVENTS))


NO_TRIGGER = (
    "no invalidation triggers on {source}: rows updated, deleted or inserted behind the "
    "watermark (older than the overlap) are not seen until a full rebuild; install them with "
    "`pipectl db incremental {step} --triggers`"
)


# --- install ----------------------------------------------------------------------------------


async def _time_type(conn: Conn, step: StepConfig) -> str:
    inc = sql.config_of(step)
    row = await conn.fetchrow(
        """
        SELECT c.relkind, format_type(a.atttypid, a.atttypmod) AS type
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $3
                                AND a.attnum > 0 AND NOT a.attisdropped
        WHERE n.nspname = $1 AND c.relname = $2
        """,
        inc.source.schema,
        inc.source.name,
        inc.time_column,
    )
    if row is None:
        raise IncrementalError(f"source {inc.source} does not exist")
    if row["relkind"] not in (b"r", b"p"):
        raise IncrementalError(f"source {inc.source} is not a table")
    if row["type"] is None:
        raise IncrementalError(f"source {inc.source} has no column {inc.time_column!r}")
    if row["type"] not in TIME_TYPES:
        raise IncrementalError(
            f"time column {inc.source}.{inc.time_column} is {row['type']}, not a timestamp"
        )
    return str(row["type"])


async def install(conn: Conn, step: StepConfig, *, triggers: bool) -> list[str]:
    """Make `step.relation` an incremental summary (in the caller's transaction): the view or
    materialized view of that name is replaced by a table of the same columns, filled by the
    defining query now, with the view's privileges (plus SELECT, INSERT, DELETE for
    pipectl_agent); an empty state table (the first refresh builds it); the step registered.
    Installing again rebuilds the state. Returns what was done, line by line."""
    inc = sql.config_of(step)
    assert step.relation is not None
    if await conn.fetchval("SELECT to_regclass('pipectl.incremental_steps')") is None:
        raise IncrementalError("pipectl's schema is older than 0012: run `pipectl db upgrade`")
    time_type = await _time_type(conn, step)
    done: list[str] = []
    target = await conn.fetchrow(
        """
        SELECT c.oid, c.relkind, c.relacl::text[] AS acl
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relname = $2
        """,
        step.relation.schema,
        step.relation.name,
    )
    registered = await conn.fetchrow(
        "SELECT state_table FROM pipectl.incremental_steps WHERE step = $1", step.name
    )
    acl: list[str] = []
    if target is not None:
        kind = target["relkind"]
        acl = list(target["acl"] or [])
        if kind == b"m":
            await conn.execute(f"DROP MATERIALIZED VIEW {step.relation.sql}")
            done.append(f"dropped materialized view {step.relation}")
        elif kind == b"v":
            await conn.execute(f"DROP VIEW {step.relation.sql}")
            done.append(f"dropped view {step.relation}")
        elif kind == b"r" and registered is not None:
            await conn.execute(f"DROP TABLE {step.relation.sql}")
        else:
            raise IncrementalError(
                f"{step.relation} exists and is not a view, a materialized view or this "
                "step's summary table: refusing to replace it"
            )
    defining = sql.defining_query(step, reference="now()")
    await conn.execute(f"CREATE TABLE {step.relation.sql} AS {defining}")
    rows = await conn.fetchval(f"SELECT count(*) FROM {step.relation.sql}")
    done.append(f"created table {step.relation} ({rows} rows, the defining query now)")
    for entry in acl:
        await _regrant(conn, step.relation, entry)
    if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'pipectl_agent'"):
        await conn.execute(f"GRANT SELECT, INSERT, DELETE ON {step.relation.sql} TO pipectl_agent")
    state = Relation(STATE_SCHEMA, state_table_name(step.name))
    minutes = Relation(STATE_SCHEMA, minutes_table_name(state.name))
    if registered is not None:
        old = Relation(STATE_SCHEMA, registered["state_table"])
        await conn.execute(f"DROP TABLE IF EXISTS {old.sql}")
        old = Relation(STATE_SCHEMA, minutes_table_name(registered["state_table"]))
        await conn.execute(f"DROP TABLE IF EXISTS {old.sql}")
    columns = ", ".join(sql.stored_columns(inc))
    floats = sql.float_aggregates(inc, await _published_types(conn, step))
    await conn.execute(
        f"CREATE TABLE {state.sql} AS SELECT {columns} FROM "
        f"({sql.state_select(inc, 'false', 'NULL', floats=floats)}) AS s WITH NO DATA"
    )
    await conn.execute(f"CREATE INDEX ON {state.sql} (_bucket)")
    # The minute states: the same columns, a minute per bucket (the window's partial oldest
    # bucket is published from them).
    await conn.execute(f"CREATE TABLE {minutes.sql} (LIKE {state.sql})")
    await conn.execute(f"CREATE INDEX ON {minutes.sql} (_bucket)")
    if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'pipectl_agent'"):
        for table in (state, minutes):
            await conn.execute(f"GRANT SELECT, INSERT, DELETE ON {table.sql} TO pipectl_agent")
            await conn.execute(f"GRANT SELECT ON {table.sql} TO pipectl_viewer")
    done.append(f"created state tables {state} and {minutes} (the first refresh fills them)")
    await conn.execute(
        """
        INSERT INTO pipectl.incremental_steps AS s (step, source_schema, source_table,
            time_column, time_type, state_table, signature, published_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, now())
        ON CONFLICT (step) DO UPDATE SET source_schema = excluded.source_schema,
            source_table = excluded.source_table, time_column = excluded.time_column,
            time_type = excluded.time_type, state_table = excluded.state_table,
            signature = excluded.signature, installed_at = now(), installed_by = session_user,
            watermark = NULL, reread_from = NULL, published_at = now(), time_zone = NULL,
            refreshed_at = NULL,
            rows_read = NULL, rows_arrived = NULL
        """,
        step.name,
        inc.source.schema,
        inc.source.name,
        inc.time_column,
        time_type,
        state.name,
        sql.signature(inc),
    )
    await conn.execute("DELETE FROM pipectl.incremental_invalidations WHERE step = $1", step.name)
    if triggers:
        await install_triggers(conn, step)
        done.append(
            f"invalidation triggers on {inc.source} ({', '.join(TRIGGER_EVENTS)}, statement-level)"
        )
    elif not await triggers_installed(conn, step):
        done.append("warning: " + NO_TRIGGER.format(source=inc.source, step=step.name))
    return done


async def _regrant(conn: Conn, relation: Relation, entry: str) -> None:
    """Re-apply one aclitem of the replaced view on the new table (owner's own left out)."""
    rows = await conn.fetch(
        """
        SELECT CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS who,
               x.privilege_type, x.is_grantable, x.grantee = x.grantor AS own
        FROM aclexplode(ARRAY[$1::aclitem]) x LEFT JOIN pg_roles r ON r.oid = x.grantee
        """,
        entry,
    )
    for row in rows:
        if row["own"] or row["privilege_type"] not in (
            "SELECT",
            "INSERT",
            "UPDATE",
            "DELETE",
            "TRUNCATE",
            "REFERENCES",
            "TRIGGER",
            "MAINTAIN",
        ):
            continue
        grant = " WITH GRANT OPTION" if row["is_grantable"] else ""
        await conn.execute(
            f"GRANT {row['privilege_type']} ON {relation.sql} TO {row['who']}{grant}"
        )


async def install_triggers(conn: Conn, step: StepConfig) -> None:
    """The statement-level invalidation triggers on the step's source (replaced if there)."""
    inc = sql.config_of(step)
    column = inc.time_column.replace("'", "''")
    for event in TRIGGER_EVENTS:
        name = quote_ident(trigger_name(event, inc.time_column))
        await conn.execute(f"DROP TRIGGER IF EXISTS {name} ON {inc.source.sql}")
        referencing = {
            "insert": "REFERENCING NEW TABLE AS new_rows",
            "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
            "delete": "REFERENCING OLD TABLE AS old_rows",
            "truncate": "",
        }[event]
        await conn.execute(
            f"CREATE TRIGGER {name} AFTER {event.upper()} ON {inc.source.sql} {referencing} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION pipectl.log_invalidations('{column}')"
        )


async def drop_triggers(conn: Conn, step: StepConfig) -> None:
    inc = sql.config_of(step)
    for event in TRIGGER_EVENTS:
        name = quote_ident(trigger_name(event, inc.time_column))
        await conn.execute(f"DROP TRIGGER IF EXISTS {name} ON {inc.source.sql}")


async def uninstall(conn: Conn, step: StepConfig) -> list[str]:
    """Undo `install`: drop the summary table, the state table, the step's registration and
    (when no other step reads the same source column) the triggers. The summary must then be
    created again (`pipectl db apes --materialized` for the APES ones)."""
    inc = sql.config_of(step)
    assert step.relation is not None
    row = await conn.fetchrow(
        "SELECT state_table FROM pipectl.incremental_steps WHERE step = $1", step.name
    )
    if row is None:
        raise IncrementalError(f"step {step.name} is not installed as an incremental summary")
    done = []
    await conn.execute(f"DROP TABLE IF EXISTS {step.relation.sql}")
    done.append(f"dropped table {step.relation}")
    await conn.execute(f"DROP TABLE IF EXISTS {Relation(STATE_SCHEMA, row['state_table']).sql}")
    minutes = Relation(STATE_SCHEMA, minutes_table_name(row["state_table"]))
    await conn.execute(f"DROP TABLE IF EXISTS {minutes.sql}")
    await conn.execute("DELETE FROM pipectl.incremental_steps WHERE step = $1", step.name)
    await conn.execute("DELETE FROM pipectl.incremental_invalidations WHERE step = $1", step.name)
    done.append(f"dropped state table {STATE_SCHEMA}.{row['state_table']}")
    others = await conn.fetchval(
        "SELECT count(*) FROM pipectl.incremental_steps WHERE source_schema = $1 AND "
        "source_table = $2 AND time_column = $3",
        inc.source.schema,
        inc.source.name,
        inc.time_column,
    )
    if not others:
        await drop_triggers(conn, step)
        done.append(f"dropped the invalidation triggers on {inc.source}")
    return done


# --- refresh ------------------------------------------------------------------------------------


def _in_type(time_type: str, expr: str) -> str:
    """A stored timestamptz as a value of the time column's type (timestamp: as UTC)."""
    if time_type == "timestamp with time zone":
        return expr
    return f"({expr} AT TIME ZONE 'UTC')"


def _stored(time_type: str, expr: str) -> str:
    """A value of the time column's type as stored (timestamptz; timestamp taken as UTC)."""
    if time_type == "timestamp with time zone":
        return expr
    return f"({expr} AT TIME ZONE 'UTC')"


async def _published_types(conn: Conn, step: StepConfig) -> list[str]:
    assert step.relation is not None
    rows = await conn.fetch(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
        FROM pg_attribute a
        WHERE a.attrelid = (SELECT c.oid FROM pg_class c JOIN pg_namespace n
                            ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2
                            AND c.relkind = 'r')
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        step.relation.schema,
        step.relation.name,
    )
    names = sql.output_columns(step)
    if [r["attname"] for r in rows] != names:
        raise IncrementalError(
            f"the table {step.relation} does not have the step's columns ({', '.join(names)}): "
            f"run `pipectl db incremental {step.name}` to install it"
        )
    return [str(r["type"]) for r in rows]


def _coalesce(ranges: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Sorted, overlapping and touching ranges merged; at most MAX_RANGES (closest merged)."""
    out: list[tuple[Any, Any]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    while len(out) > MAX_RANGES:
        gaps = [(out[i + 1][0] - out[i][1], i) for i in range(len(out) - 1)]
        _, i = min(gaps)
        out[i : i + 2] = [(out[i][0], out[i + 1][1])]
    return out


async def refresh(
    conn: Conn,
    step: StepConfig,
    *,
    within: float | None = None,
    reference: datetime | None = None,
) -> Refreshed:
    """One refresh, in the caller's transaction (the step's lock held): aggregate the rows
    from the re-read point on (the last reference time minus the overlap: only what arrived
    plus the overlap's rows, not the rest of their buckets, whose earlier part the last
    refresh sealed) and recompute the invalidated buckets whole, drop buckets that left the
    window, publish the summary (the
    window's partial oldest bucket from raw rows) as a difference: DELETE the rows that
    changed or went, INSERT the new ones. Readers keep the previous content until COMMIT.
    `reference` stands for now() (the transaction's start) where a test moves time."""
    inc = sql.config_of(step)
    assert step.relation is not None
    row = await conn.fetchrow(
        # NO KEY UPDATE, so that nothing keyed on the row (a foreign key's KEY SHARE) would
        # wait for the refresh; the triggers only read the row.
        "SELECT * FROM pipectl.incremental_steps WHERE step = $1 FOR NO KEY UPDATE",
        step.name,
        timeout=within,
    )
    if row is None:
        raise IncrementalError(
            f"step {step.name} is not installed: run `pipectl db incremental {step.name}` "
            "(it replaces the summary by an incremental table)"
        )
    if row["signature"] != sql.signature(inc):
        raise IncrementalError(
            f"step {step.name}'s definition changed since it was installed: run "
            f"`pipectl db incremental {step.name}` again (it rebuilds the state)"
        )
    if (row["source_schema"], row["source_table"], row["time_column"]) != (
        inc.source.schema,
        inc.source.name,
        inc.time_column,
    ):
        raise IncrementalError(f"step {step.name} was installed for another source")
    ttype = row["time_type"]
    state = Relation(STATE_SCHEMA, row["state_table"]).sql
    minutes = Relation(STATE_SCHEMA, minutes_table_name(row["state_table"])).sql
    types = await _published_types(conn, step)
    # Custom plans only: the time bounds are parameters, and from a statement's sixth
    # execution PostgreSQL may keep a generic plan, which cannot see that `time >= $2` picks
    # the last minutes and reads the whole source sequentially (10.5M rows read for 100k
    # arrived in the bench's fifth round). No JIT: the cost a disabled sort (below) adds
    # where a sort is the only way (a window's) would compile every statement (seconds).
    # Restored at the end, for the gates, as enable_sort.
    settings = await conn.fetchrow(
        "SELECT current_setting('enable_sort') AS sort, current_setting('jit') AS jit, "
        "set_config('plan_cache_mode', 'force_custom_plan', true), "
        "set_config('jit', 'off', true), "
        "set_config('extra_float_digits', '1', true)",
        timeout=within,
    )
    assert settings is not None
    warnings = []
    if not await triggers_installed(conn, step):
        warnings.append(NO_TRIGGER.format(source=inc.source, step=step.name))
    unit = f"interval '1 {inc.bucket}'"
    cast = f"::{ttype}"
    bounds = await conn.fetchrow(
        f"""
        SELECT w.ref, w.ws, current_setting('TimeZone') AS zone,
               date_trunc('{inc.bucket}', w.ws) + {unit} AS edge_end,
               date_trunc('{sql.MINUTE}', w.ws) AS minutes_from,
               date_trunc('{sql.MINUTE}', w.ws) + CASE WHEN date_trunc('{sql.MINUTE}', w.ws)
                   = w.ws THEN interval '0' ELSE interval '1 {sql.MINUTE}' END AS minutes_edge,
               (w.ref - {sql.interval_sql(inc.overlap)}){cast} AS next_reread,
               {_in_type(ttype, "$1::timestamptz")} AS reread,
               {_in_type(ttype, "$2::timestamptz")} AS arrived_from
        FROM (SELECT r.ref, {sql.window_start(inc, "r.ref")}{cast} AS ws
              FROM (SELECT COALESCE($3::timestamptz, now()) AS ref) AS r) AS w
        """,
        row["reread_from"],
        row["watermark"],
        reference,
        timeout=within,
    )
    assert bounds is not None
    edge_end = bounds["edge_end"]
    # The state: the step's buckets from edge_end on (the window's whole buckets), minute
    # states from minutes_from on (the minute of the window's start), both kept exact for
    # everything before `reread` (sealed) and recomputed from raw rows after it.
    minutes_from = bounds["minutes_from"]
    invalid = await conn.fetch(
        f"""
        WITH gone AS (DELETE FROM pipectl.incremental_invalidations WHERE step = $1
                      RETURNING lo, hi)
        SELECT isfinite(lo) AS finite,
               date_trunc('{inc.bucket}', {_in_type(ttype, "lo")}) AS lo,
               date_trunc('{inc.bucket}', {_in_type(ttype, "hi")} - interval '1 microsecond')
                   + {unit} AS hi
        FROM gone WHERE isfinite(lo)
        UNION ALL SELECT false, NULL, NULL FROM gone WHERE NOT isfinite(lo)
        """,
        step.name,
        timeout=within,
    )
    # The session's TimeZone (the agent's `timezone`) cuts the day buckets of a timestamptz
    # column and places now() among a timestamp column's values: state kept under another
    # zone is rebuilt.
    rezoned = row["time_zone"] != bounds["zone"]
    # A reference time before the last one (the clock went back) would bring back buckets
    # already dropped from the window: rebuild.
    went_back = row["watermark"] is not None and bounds["ref"] < row["watermark"]
    full = bounds["reread"] is None or rezoned or went_back or any(not r["finite"] for r in invalid)
    reread = minutes_from if full else max(bounds["reread"], minutes_from)
    # No sort where a hash will do: the rows read are grouped by few keys, but the statistics
    # know nothing of the rows that just arrived, and the few rows PostgreSQL expects make it
    # sort them instead (on disk past work_mem: 120k rows in 250 ms against 90 ms hashed).
    # A rebuild reads the whole window: the planner knows, and sorts where that is cheaper.
    if not full:
        await conn.execute("SELECT set_config('enable_sort', 'off', true)", timeout=within)
    # Where the next refresh reads again from: what this one reads after it stays open (its
    # state rows are replaced next time), what it reads before it is sealed (kept; changed
    # only through the invalidation log). Never before this refresh's own start, which would
    # read sealed rows twice (the reference time moved back).
    next_reread = max(bounds["next_reread"], reread)
    ranges = _coalesce(
        [
            (max(r["lo"], minutes_from), r["hi"])
            for r in invalid
            if r["finite"] and r["hi"] > minutes_from and r["lo"] < reread
        ]
    )
    # $1 edge_end, $2 reread, $3 minutes_from, then lo/hi pairs: what is recomputed, in the
    # column's type.
    args: list[Any] = [edge_end, reread, minutes_from]
    # A full rebuild replaces every bucket; otherwise the open rows (all at or after `reread`,
    # where the last refresh sealed) and the invalidated buckets.
    # (Open rows all lie in buckets from `reread`'s on: the bound only keeps $2 in the text.)
    parts = [
        f"_bucket >= $2{cast}"
        if full
        else f"(_open AND _bucket >= date_trunc('{inc.bucket}', $2{cast}))"
    ]
    raw = [f"src.{quote_ident(inc.time_column)} >= $2{cast}"]
    for lo, hi in ranges:
        args += [lo, hi]
        a, b = len(args) - 1, len(args)
        parts.append(f"(_bucket >= ${a}{cast} AND _bucket < ${b}{cast})")
        raw.append(
            f"(src.{quote_ident(inc.time_column)} >= ${a}{cast} AND "
            f"src.{quote_ident(inc.time_column)} < ${b}{cast})"
        )
    time = f"src.{quote_ident(inc.time_column)}"
    await conn.execute(
        f"""
        WITH buckets AS (DELETE FROM {state} WHERE _bucket < $1{cast} OR {" OR ".join(parts)})
        DELETE FROM {minutes} WHERE _bucket < $3{cast} OR {" OR ".join(parts)}
        """,
        *args,
        timeout=within,
    )
    arrived = len(args) + 1
    args.append(bounds["arrived_from"])
    args.append(next_reread)
    columns = ", ".join(sql.stored_columns(inc))
    floats = sql.float_aggregates(inc, types)
    # The raw rows are aggregated once, per minute; the step's buckets are merged from those.
    recompute = sql.state_select(
        inc,
        f"{time} >= $3{cast} AND ({' OR '.join(raw)})",
        f"COALESCE(${arrived}{cast}, '-infinity')",
        open_from=f"${arrived + 1}{cast}",
        floats=floats,
        grain=sql.MINUTE,
    )
    rollup = sql.rollup_select(inc, "fresh", f"f._bucket >= $1{cast}", floats)
    counts = await conn.fetchrow(
        f"""
        WITH fresh AS MATERIALIZED ({recompute}),
             fine AS (INSERT INTO {minutes} ({columns}) SELECT {columns} FROM fresh),
             rolled AS MATERIALIZED ({rollup}),
             stored AS (INSERT INTO {state} ({columns}) SELECT {columns} FROM rolled)
        SELECT (SELECT count(DISTINCT _bucket) FROM rolled) AS buckets,
               COALESCE(sum(_rows), 0)::bigint AS read,
               COALESCE(sum(_arrived), 0)::bigint AS arrived
        FROM fresh
        """,
        *args,
        timeout=within,
    )
    assert counts is not None
    await conn.execute(
        sql.compact_sql(inc, state, f"date_trunc('{inc.bucket}', $1{cast})", floats),
        reread,
        timeout=within,
    )
    if full:
        # A rebuild wrote every state row anew: without statistics (until autovacuum comes
        # round) the next refreshes' few DELETEs look like a third of each table to the
        # planner, which scans the minute states whole (~210 ms at 10M source rows).
        # ANALYZE counts this transaction's own rows; a role that does not own the tables
        # gets a warning, not an error.
        await conn.execute(f"ANALYZE {state}, {minutes}", timeout=within)
    # The window's partial oldest bucket: its minute states from the first whole minute of
    # the window on, raw rows before that (less than a minute of them).
    edge_raw = sql.state_select(
        inc,
        f"{time} >= $2{cast} AND {time} < $4{cast}",
        f"COALESCE($3{cast}, '-infinity')",
        floats=floats,
    )
    summary = sql.publish_select(inc, state, f"$1{cast}", "SELECT * FROM edge", types)
    published = await conn.fetchrow(
        f"""
        WITH edge_raw AS MATERIALIZED ({edge_raw}),
             edge AS MATERIALIZED (
                SELECT {columns} FROM {minutes} WHERE _bucket >= $4{cast} AND _bucket < $1{cast}
                UNION ALL SELECT {columns} FROM edge_raw),
             new AS MATERIALIZED (SELECT s, s::text AS image FROM ({summary}) AS s),
             old AS MATERIALIZED (SELECT p.ctid AS id, p::text AS image FROM {step.relation.sql} p),
             gone AS (DELETE FROM {step.relation.sql} WHERE ctid IN
                        (SELECT id FROM old WHERE image NOT IN (SELECT image FROM new))
                      RETURNING 1),
             added AS (INSERT INTO {step.relation.sql}
                       SELECT (new.s).* FROM new WHERE image NOT IN (SELECT image FROM old)
                       RETURNING 1)
        SELECT (SELECT count(*) FROM new) AS rows, (SELECT count(*) FROM gone) AS deleted,
               (SELECT count(*) FROM added) AS inserted,
               (SELECT COALESCE(sum(_rows), 0) FROM edge_raw)::bigint AS edge_read
        """,
        edge_end,
        bounds["ws"],
        bounds["arrived_from"],
        bounds["minutes_edge"],
        timeout=within,
    )
    assert published is not None
    rows_read = int(counts["read"]) + int(published["edge_read"])
    await conn.execute(
        f"""
        UPDATE pipectl.incremental_steps
        SET watermark = $2, reread_from = {_stored(ttype, f"$3{cast}")}, published_at = $2,
            refreshed_at = clock_timestamp(), rows_read = $4, rows_arrived = $5,
            time_zone = current_setting('TimeZone')
        WHERE step = $1
        """,
        step.name,
        bounds["ref"],
        next_reread,
        rows_read,
        int(counts["arrived"]),
        timeout=within,
    )
    await conn.execute(
        "SELECT set_config('enable_sort', $1, true), set_config('jit', $2, true)",
        settings["sort"],
        settings["jit"],
        timeout=within,
    )
    return Refreshed(
        rows=int(published["rows"]),
        rows_read=rows_read,
        rows_arrived=int(counts["arrived"]),
        buckets=int(counts["buckets"]),
        invalidations=len(invalid),
        deleted=int(published["deleted"]),
        inserted=int(published["inserted"]),
        reference_time=bounds["ref"],
        full=full,
        warnings=warnings,
    )


# --- audit --------------------------------------------------------------------------------------


class NotReplayable(IncrementalError):
    """The step's next refresh rebuilds its state: there is no kept state to audit."""


async def replay_sql(conn: Conn, step: StepConfig) -> str:
    """SQL (parameter $1: the step's name) of the summary as the step's next refresh would
    publish it now: the state's sealed buckets not invalidated, plus the rows the refresh
    would aggregate from raw (from its re-read point on, and the invalidated buckets), plus
    the window's partial edge, merged per group and cast to the published types. Every part
    is read by the one statement (one snapshot), with now() as the reference time, so a full
    recompute in the same statement compares like with like however the source is written
    meanwhile (an audit of the published table instead differs by whatever arrived since its
    refresh). Raises NotReplayable when the next refresh is a rebuild."""
    inc = sql.config_of(step)
    row = await conn.fetchrow(
        "SELECT state_table, time_type, reread_from, time_zone, watermark > now() AS back,"
        " time_zone IS DISTINCT FROM current_setting('TimeZone') AS rezoned"
        " FROM pipectl.incremental_steps WHERE step = $1",
        step.name,
    )
    if row is None:
        raise IncrementalError(
            f"step {step.name} is not installed: run `pipectl db incremental {step.name}`"
        )
    if row["reread_from"] is None or row["rezoned"] or row["back"]:
        why = (
            "it has not been refreshed since it was installed"
            if row["reread_from"] is None
            else "its state was cut in another TimeZone"
            if row["rezoned"]
            else "its last reference time is ahead of now (the clock went back)"
        )
        raise NotReplayable(f"step {step.name}'s next refresh rebuilds its state: {why}")
    ttype = row["time_type"]
    cast = f"::{ttype}"
    unit = f"interval '1 {inc.bucket}'"
    state = Relation(STATE_SCHEMA, row["state_table"]).sql
    types = await _published_types(conn, step)
    time = f"src.{quote_ident(inc.time_column)}"
    columns = ", ".join(sql.stored_columns(inc))
    floats = sql.float_aggregates(inc, types)
    fresh = sql.state_select(
        inc,
        f"{time} >= (SELECT edge_end FROM e) AND ({time} >= (SELECT reread FROM e)"
        f" OR EXISTS (SELECT 1 FROM inv WHERE {time} >= inv.lo AND {time} < inv.hi))",
        "'-infinity'",
        floats=floats,
    )
    edge = sql.state_select(
        inc,
        f"{time} >= (SELECT ws FROM e) AND {time} < (SELECT edge_end FROM e)",
        "'-infinity'",
        floats=floats,
    )
    publish = sql.publish_select(
        inc,
        "(SELECT * FROM kept UNION ALL SELECT * FROM fresh) AS st",
        "(SELECT edge_end FROM e)",
        edge,
        types,
    )
    return f"""
        WITH meta AS (
            SELECT {_in_type(ttype, "s.reread_from")} AS reread
            FROM pipectl.incremental_steps s WHERE s.step = $1
        ),
        b AS (SELECT {sql.window_start(inc, "now()")}{cast} AS ws),
        e AS (
            SELECT b.ws, date_trunc('{inc.bucket}', b.ws) + {unit} AS edge_end,
                   GREATEST(meta.reread, date_trunc('{inc.bucket}', b.ws) + {unit}) AS reread
            FROM b, meta
        ),
        inv AS (
            SELECT date_trunc('{inc.bucket}', {_in_type(ttype, "i.lo")}) AS lo,
                   date_trunc('{inc.bucket}', {_in_type(ttype, "i.hi")}
                              - interval '1 microsecond') + {unit} AS hi
            FROM pipectl.incremental_invalidations i WHERE i.step = $1
        ),
        kept AS (
            SELECT {columns} FROM {state} AS st
            WHERE NOT st._open AND st._bucket >= (SELECT edge_end FROM e)
              AND NOT EXISTS (SELECT 1 FROM inv WHERE st._bucket >= inv.lo
                                                  AND st._bucket < inv.hi)
        ),
        fresh AS (SELECT {columns} FROM ({fresh}) AS f)
        SELECT * FROM ({publish}) AS p
    """
