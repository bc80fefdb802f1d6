"""Fill the APES layout to a given size, inside PostgreSQL, with the upstream indexes.

    python -m bench.generate --rows 1000000 [--days 90] [--dsn DSN] [--tables ...]

`--rows` is the size of `rule_performance` (the table the checks and Soda verify); the other
tables get the simulator's proportions to it (user_feedback 15 %, prompt_improvement_sessions
62.5 %, improvement_sessions 8.3 %, discovered_patterns 2 %). Without --dsn a scratch database
is created on embedded PostgreSQL and dropped at the end (useful only to time the generator).

No row passes through Python: each chunk is one `INSERT ... SELECT FROM generate_series`, and
the distributions are the simulator's (pipectl/simulator): rules weighted by priority with
their own mean score and lognormal execution time, prompts from its sample catalogue, 1-2
rules per request sharing a prompt_id, office-hours rhythm with quiet weekends, rows in time
order as an append-only table has them (so recent rows are physically together), and a few
planted defects for the checks to find: 0.5 % NULL confidence_level, 0.02 % execution times out
of range, 0.01 % re-delivered (prompt_id, rule_id) pairs. `setseed` makes a run repeatable.

The upstream indexes (sql/apes/schema.sql) are dropped before the load and re-created with
their exact definitions after it, which is how a bulk load is done and much faster than
maintaining a GIN index row by row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from pipectl.simulator.catalog import AGENT_TYPES, RULES, SAMPLE_PROMPT_SPECS
from pipectl.simulator.rhythm import FEEDS, weight

CHUNK = 250_000
SHARES: dict[str, float] = {
    table: FEEDS[table].peak_per_hour / FEEDS["rule_performance"].peak_per_hour
    for table in (
        "rule_performance",
        "user_feedback",
        "prompt_improvement_sessions",
        "improvement_sessions",
        "discovered_patterns",
    )
}
TABLES: tuple[str, ...] = tuple(SHARES)

Progress_ = Callable[[int, int], None]


@dataclass(frozen=True)
class Timeline:
    """Hourly activity weights over the span: row fraction f maps to a moment, in order."""

    start: datetime
    bounds: list[float]
    """Cumulative share of rows before each hour (first 0.0), for width_bucket."""
    shares: list[float]
    """Share of rows in each hour."""
    slot: timedelta = timedelta(hours=1)


def timeline(end: datetime, days: int, seed: int) -> Timeline:
    """The simulator's rhythm (office hours in UTC, quiet weekends, day-to-day variation)
    over hourly slots, the last of which ends exactly at `end`."""
    rng = random.Random(seed)
    hours = days * 24
    start = end - timedelta(hours=hours)
    day_factor: dict[object, float] = {}
    weights: list[float] = []
    for i in range(hours):
        middle = start + timedelta(hours=i, minutes=30)
        day = middle.date()
        if day not in day_factor:
            day_factor[day] = min(1.2, max(0.8, rng.gauss(1.0, 0.08)))
        weights.append(weight(middle) * day_factor[day])
    total = sum(weights)
    shares = [w / total for w in weights]
    bounds, running = [], 0.0
    for share in shares:
        bounds.append(running)
        running += share
    return Timeline(start, bounds, shares)


# Time of row g of n: monotone in g, so rows are appended in time order.
_TIME = """
    ($T::timestamptz AT TIME ZONE 'UTC')
    + (width_bucket({f}, $B::float8[]) - 1) * $U::interval
    + (({f} - ($B::float8[])[width_bucket({f}, $B::float8[])])
       / ($S::float8[])[width_bucket({f}, $B::float8[])]) * $U::interval
"""


def _time(g: str, n: str) -> str:
    return _TIME.replace("{f}", f"(({g} - $base - 0.5) / {n})")


def _unit(expr: str) -> str:
    """A hash of `expr` as a float in [0, 1) (hashint8 is a 32-bit signed int)."""
    return f"(((hashint8({expr})::bigint + 2147483648) / 4294967296.0)::float8)"


def _pick(expr: str, n: str) -> str:
    """1..n from a hash of `expr`."""
    return f"(1 + (hashint8({expr})::bigint + 2147483648) % {n})"


# A standard normal draw (Box-Muller; random_normal() is PostgreSQL 16+ only).
_NORMAL = "(sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))"

RULE_PERFORMANCE = f"""
INSERT INTO public.rule_performance
    (rule_id, rule_name, prompt_id, prompt_type, prompt_category, improvement_score,
     confidence_level, execution_time_ms, rule_parameters, prompt_characteristics,
     before_metrics, after_metrics, created_at, updated_at)
SELECT $rid[x.rule], $rname[x.rule], x.prompt_id, $ptype[x.prompt], $pcat[x.prompt],
       x.score,
       CASE WHEN random() < 0.005 THEN NULL
            ELSE round(least(0.99, greatest(0.05, 0.55 + 0.35 * x.score
                 + 0.08 * {_NORMAL}))::numeric, 4)::float8 END,
       CASE WHEN random() < 0.0002
            THEN (CASE WHEN random() < 0.5 THEN -1 - (random() * 1000)::int
                       ELSE 3600000 + (random() * 86400000)::int END)
            ELSE least(5000, greatest(3, exp(ln($rms[x.rule]) + 0.45 * {_NORMAL})))::int END,
       $rparams[x.rule],
       jsonb_build_object('length', $plen[x.prompt], 'word_count', $pwords[x.prompt],
                          'domain', $pdomain[x.prompt],
                          'complexity', round(least(1.0, greatest(0.05,
                              $pwords[x.prompt] / 30.0 + 0.1 * {_NORMAL}))::numeric, 2),
                          'has_code', $pcat[x.prompt] = 'technical' AND random() < 0.4,
                          'language', 'en'),
       jsonb_build_object('clarity', x.b1, 'specificity', x.b2, 'completeness', x.b3),
       jsonb_build_object(
           'clarity', round((x.b1 + (1 - x.b1) * x.score * (0.4 + 0.5 * random()))::numeric, 3),
           'specificity',
               round((x.b2 + (1 - x.b2) * x.score * (0.4 + 0.5 * random()))::numeric, 3),
           'completeness',
               round((x.b3 + (1 - x.b3) * x.score * (0.4 + 0.5 * random()))::numeric, 3)),
       x.at, x.at
FROM (
    SELECT r.*, {_time("r.g", "$N::float8")} AS at,
           round(least(1.0, greatest(0.0, $rmean[r.rule] + 0.13 * {_NORMAL}))::numeric, 4)::float8
               AS score,
           round((0.25 + random() * 0.45)::numeric, 3)::float8 AS b1,
           round((0.20 + random() * 0.45)::numeric, 3)::float8 AS b2,
           round((0.30 + random() * 0.45)::numeric, 3)::float8 AS b3
    FROM (
        SELECT q.g, md5($seed::text || ':' || q.request)::uuid AS prompt_id,
               1 + (q.h2 % $nprompts) AS prompt,
               CASE WHEN q.g % 2 = 1 OR q.redelivered THEN q.first
                    ELSE 1 + (q.first + q.h1 % ($nrules - 1)) % $nrules END AS rule
        FROM (
            SELECT g, (g + 1) / 2 AS request, random() < 0.0001 AS redelivered,
                   width_bucket({_unit("($seed::bigint << 32) + (g + 1) / 2")}, $rcum::float8[])
                       AS first,
                   {_pick("($seed::bigint << 33) + (g + 1) / 2", "1000000")} AS h1,
                   {_pick("($seed::bigint << 34) + (g + 1) / 2", "1000000")} AS h2
            FROM generate_series($lo::bigint, $hi::bigint) AS g
        ) q
    ) r
) x
"""

USER_FEEDBACK = f"""
INSERT INTO public.user_feedback
    (feedback_id, original_prompt, improved_prompt, user_rating, applied_rules, user_context,
     improvement_areas, user_notes, session_id, created_at)
SELECT gen_random_uuid(), $ptext[x.prompt], $ptext[x.prompt] || ' ' || $radd[x.rule],
       CASE WHEN random() < 0.08 THEN NULL
            ELSE least(5, greatest(1, round(2.9 + 2.0 * $rmean[x.rule] + 0.9 * {_NORMAL})))::int
       END,
       jsonb_build_array(jsonb_build_object('rule_id', $rid[x.rule], 'rule_name',
                                            $rname[x.rule])),
       jsonb_build_object('client', (ARRAY['mcp', 'cli', 'web', 'api'])[1 + (x.g % 4)],
                          'agent_type', $agent[1 + (x.g % $nagents)],
                          'domain', $pdomain[x.prompt], 'prompt_type', $ptype[x.prompt]),
       jsonb_build_array($rarea[x.rule]),
       CASE WHEN random() < 0.25 THEN 'Helpful, but it made the prompt longer.' END,
       'sess_' || md5($seed::text || ':s:' || (x.g / 3)),
       x.at
FROM (
    SELECT g, {_time("g", "$N::float8")} AS at,
           {_pick("g * 7 + $seed", "$nprompts")} AS prompt,
           width_bucket({_unit("g * 11 + $seed")}, $rcum::float8[]) AS rule
    FROM generate_series($lo::bigint, $hi::bigint) AS g
) x
"""

PROMPT_SESSIONS = f"""
INSERT INTO public.prompt_improvement_sessions
    (original_prompt, enhanced_prompt, applied_rules, response_time_ms, cache_hit_level,
     agent_type, session_timestamp, anonymized_user_hash, created_at)
SELECT $ptext[x.prompt], $ptext[x.prompt] || ' ' || $radd[x.rule],
       jsonb_build_array(jsonb_build_object('rule_id', $rid[x.rule], 'rule_name',
                                            $rname[x.rule])),
       least(29999, greatest(1, exp(ln(CASE x.level WHEN 'L1' THEN 2.0 WHEN 'L2' THEN 8.0
                                          WHEN 'L3' THEN 45.0 ELSE 135.0 END)
                                   + 0.5 * {_NORMAL})))::int,
       x.level, $agent[1 + (x.g % $nagents)],
       x.at AT TIME ZONE 'UTC',
       md5('user_' || (180 * random() ^ 2)::int),
       x.at AT TIME ZONE 'UTC'
FROM (
    SELECT g, {_time("g", "$N::float8")} AS at,
           {_pick("g * 13 + $seed", "$nprompts")} AS prompt,
           width_bucket({_unit("g * 17 + $seed")}, $rcum::float8[]) AS rule,
           CASE WHEN u < 0.30 THEN 'L1' WHEN u < 0.86 THEN 'L2' WHEN u < 0.91 THEN 'L3'
                ELSE 'MISS' END AS level
    FROM (SELECT g, random() AS u FROM generate_series($lo::bigint, $hi::bigint) AS g) s
) x
"""

IMPROVEMENT_SESSIONS = f"""
INSERT INTO public.improvement_sessions
    (session_id, user_id, original_prompt, final_prompt, rules_applied, iteration_count,
     total_improvement_score, session_metadata, started_at, completed_at, status)
SELECT 'sess_' || md5($seed::text || ':i:' || x.g),
       'user_' || lpad((180 * random() ^ 2)::int::text, 4, '0'),
       $ptext[x.prompt],
       CASE WHEN x.abandoned THEN NULL ELSE $ptext[x.prompt] || ' ' || $radd[x.rule] END,
       CASE WHEN x.abandoned THEN '[]'::jsonb
            ELSE jsonb_build_array(jsonb_build_object('rule_id', $rid[x.rule], 'rule_name',
                                                      $rname[x.rule])) END,
       1 + (random() * 5)::int,
       CASE WHEN x.abandoned THEN NULL
            ELSE round(least(1.0, $rmean[x.rule] + 0.05)::numeric, 4)::float8 END,
       jsonb_build_object('client', (ARRAY['mcp', 'cli', 'web', 'api'])[1 + (x.g % 4)],
                          'agent_type', $agent[1 + (x.g % $nagents)]),
       x.at,
       CASE WHEN x.abandoned THEN NULL
            ELSE x.at + least(1200, greatest(45, exp(ln(240) + 0.6 * {_NORMAL})))
                        * interval '1 second' END,
       CASE WHEN x.abandoned THEN 'abandoned' ELSE 'completed' END
FROM (
    SELECT g, {_time("g", "$N::float8")} AS at, random() < 0.22 AS abandoned,
           {_pick("g * 19 + $seed", "$nprompts")} AS prompt,
           width_bucket({_unit("g * 23 + $seed")}, $rcum::float8[]) AS rule
    FROM generate_series($lo::bigint, $hi::bigint) AS g
) x
"""

DISCOVERED_PATTERNS = f"""
INSERT INTO public.discovered_patterns
    (pattern_id, pattern_name, pattern_description, pattern_rule, discovery_method,
     effectiveness_score, support_count, confidence_interval, validation_status,
     discovered_at, validated_at)
SELECT gen_random_uuid(), 'pattern_' || $rid[x.rule], 'Apply ' || $rname[x.rule] || ' first',
       jsonb_build_object('if', jsonb_build_object('prompt_type', $ptype[x.prompt]),
                          'then', jsonb_build_object('apply', jsonb_build_array($rid[x.rule]))),
       (ARRAY['ml_mining', 'statistical_analysis', 'manual'])[1 + (x.g % 3)],
       x.score, (120 * exp(0.8 * (random() - 0.5)))::int,
       jsonb_build_object('lower', x.score - 0.06, 'upper', x.score + 0.06, 'level', 0.95),
       x.status, x.at, CASE WHEN x.status <> 'pending' THEN x.at + interval '3 hours' END
FROM (
    SELECT g, {_time("g", "$N::float8")} AS at,
           round((0.5 + 0.45 * random())::numeric, 4)::float8 AS score,
           (ARRAY['validated', 'validated', 'rejected', 'pending'])[1 + (g % 4)] AS status,
           {_pick("g * 29 + $seed", "$nprompts")} AS prompt,
           width_bucket({_unit("g * 31 + $seed")}, $rcum::float8[]) AS rule
    FROM generate_series($lo::bigint, $hi::bigint) AS g
) x
"""

STATEMENTS: dict[str, str] = {
    "rule_performance": RULE_PERFORMANCE,
    "user_feedback": USER_FEEDBACK,
    "prompt_improvement_sessions": PROMPT_SESSIONS,
    "improvement_sessions": IMPROVEMENT_SESSIONS,
    "discovered_patterns": DISCOVERED_PATTERNS,
}


def _catalogue() -> dict[str, object]:
    """The simulator's rules and prompts, as arrays for the SQL above."""
    total = sum(r.priority for r in RULES)
    cum, running = [], 0.0
    for rule in RULES:
        cum.append(running / total)
        running += rule.priority
    return {
        "rid": [r.rule_id for r in RULES],
        "rname": [r.rule_name for r in RULES],
        "rmean": [r.mean_score for r in RULES],
        "rms": [float(r.mean_ms) for r in RULES],
        "rparams": [json.dumps(r.default_parameters) for r in RULES],
        "radd": [r.addition for r in RULES],
        "rarea": [(r.areas or ("clarity",))[0] for r in RULES],
        "rcum": cum,
        "nrules": len(RULES),
        "ptext": [p.text for p in SAMPLE_PROMPT_SPECS],
        "ptype": [p.prompt_type for p in SAMPLE_PROMPT_SPECS],
        "pcat": [p.category for p in SAMPLE_PROMPT_SPECS],
        "pdomain": [p.domain for p in SAMPLE_PROMPT_SPECS],
        "plen": [len(p.text) for p in SAMPLE_PROMPT_SPECS],
        "pwords": [len(p.text.split()) for p in SAMPLE_PROMPT_SPECS],
        "nprompts": len(SAMPLE_PROMPT_SPECS),
        "agent": [a for a, _ in AGENT_TYPES],
        "nagents": len(AGENT_TYPES),
    }


_TYPES = {
    "rid": "text[]",
    "rname": "text[]",
    "rmean": "float8[]",
    "rms": "float8[]",
    "rparams": "jsonb[]",
    "radd": "text[]",
    "rarea": "text[]",
    "ptext": "text[]",
    "ptype": "text[]",
    "pcat": "text[]",
    "pdomain": "text[]",
    "plen": "int[]",
    "pwords": "int[]",
    "agent": "text[]",
    "nrules": "int",
    "nprompts": "int",
    "nagents": "int",
    "seed": "int",
}


@dataclass(frozen=True)
class Bound:
    """A statement with $name placeholders turned into positional parameters."""

    sql: str
    names: tuple[str, ...]

    def args(self, values: dict[str, object]) -> list[object]:
        return [values[name] for name in self.names]


def bind(sql: str, names: Sequence[str]) -> Bound:
    """Replace each $name (longest names first, so no name eats another) by $1, $2, ..."""
    used: list[str] = []
    for name in sorted(names, key=len, reverse=True):
        token = f"${name}"
        if token not in sql:
            continue
        used.append(name)
        cast = _TYPES.get(name)
        position = f"${len(used)}"
        sql = sql.replace(token, f"({position}::{cast})" if cast else position)
    return Bound(sql, tuple(used))


def planned_rows(rows: int, tables: Sequence[str]) -> dict[str, int]:
    return {t: max(1, round(rows * SHARES[t])) for t in tables}


async def _indexes(conn: asyncpg.Connection, tables: Sequence[str]) -> list[tuple[str, str]]:
    """(name, definition) of the non-constraint indexes on `tables` (the upstream ones)."""
    rows = await conn.fetch(
        """
        SELECT i.indexname, i.indexdef FROM pg_indexes i
        WHERE i.schemaname = 'public' AND i.tablename = ANY($1::text[])
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)
        ORDER BY i.tablename, i.indexname
        """,
        list(tables),
    )
    return [(r["indexname"], r["indexdef"]) for r in rows]


async def _fill(
    conn: asyncpg.Connection,
    table: str,
    count: int,
    line: Timeline,
    *,
    first: int,
    seed: int,
    step: Callable[[int], None],
) -> None:
    """Rows first..first+count-1 of `table`, in chunks of CHUNK."""
    values: dict[str, object] = {
        **_catalogue(),
        "seed": seed,
        "N": float(count),
        "T": line.start,
        "U": line.slot,
        "B": line.bounds,
        "S": line.shares,
        "base": first - 1,
    }
    statement = bind(STATEMENTS[table], [*values, "lo", "hi"])
    for low in range(first, first + count, CHUNK):
        high = min(first + count - 1, low + CHUNK - 1)
        await conn.execute(statement.sql, *statement.args({**values, "lo": low, "hi": high}))
        step(high - low + 1)


async def generate(
    dsn: str,
    rows: int,
    *,
    days: int = 90,
    tables: Sequence[str] = TABLES,
    end: datetime | None = None,
    seed: int = 7,
    progress: Progress_ | None = None,
) -> dict[str, int]:
    """Load `rows` rule applications (and the companions in `tables`) ending at `end` into a
    database with the empty APES schema; returns rows written per table."""
    end = end or datetime.now(UTC)
    line = timeline(end, days, seed)
    counts = planned_rows(rows, tables)
    total = sum(counts.values())
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT setseed($1)", (seed % 1000) / 1000)
        indexes = await _indexes(conn, tables)
        for name, _ in indexes:
            await conn.execute(f'DROP INDEX public."{name}"')
        step(0)
        for table, count in counts.items():
            await _fill(conn, table, count, line, first=1, seed=seed, step=step)
        for _, definition in indexes:
            await conn.execute(definition)
        await conn.execute(f"VACUUM (ANALYZE) {', '.join(f'public.{t}' for t in tables)}")
    finally:
        await conn.close()
    return counts


async def append_rule_performance(
    conn: asyncpg.Connection, rows: int, start: datetime, end: datetime, *, seed: int = 7
) -> None:
    """New rule applications spread evenly over (start, end], indexes in place (live
    arrival); request numbers continue after the table's highest id so prompt_ids stay new."""
    first = int(await conn.fetchval("SELECT coalesce(max(id), 0) + 1 FROM public.rule_performance"))
    line = Timeline(start, [0.0], [1.0], end - start)
    await _fill(conn, "rule_performance", rows, line, first=first, seed=seed, step=lambda n: None)


@contextlib.contextmanager
def progress_bar(label: str, console: Console | None = None) -> Iterator[Progress_]:
    """A rich progress bar as a (done, total) callback."""
    with Progress(
        label, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


async def _main(args: argparse.Namespace) -> None:
    from bench.common import Database

    began = time.perf_counter()
    if args.dsn:
        with progress_bar("generate") as update:
            counts = await generate(
                args.dsn, args.rows, days=args.days, tables=args.tables, progress=update
            )
        dsn = args.dsn
        size = await _size(dsn)
    else:
        async with Database.create() as db:
            with progress_bar("generate") as update:
                counts = await generate(
                    db.dsn, args.rows, days=args.days, tables=args.tables, progress=update
                )
            size = await _size(db.dsn)
            dsn = "(scratch database, dropped)"
    elapsed = time.perf_counter() - began
    for table, count in counts.items():
        print(f"{table:30} {count:>12,}")
    total = sum(counts.values())
    print(f"{total:,} rows in {elapsed:.0f}s ({total / elapsed:,.0f} rows/s); {size}; {dsn}")


async def _size(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(
            await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
        )
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True, help="rows of rule_performance")
    parser.add_argument("--days", type=int, default=90, help="span of the history")
    parser.add_argument(
        "--dsn", help="database with the APES schema to fill (default: a scratch database)"
    )
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
