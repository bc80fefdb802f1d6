"""Incremental summaries: the SQL of a `kind = "incremental"` step.

A summary over a sliding window of a source table (`time_column >= now() - window`, grouped by
keys) is kept as per-bucket partial aggregates (count; exact numeric sums and sums of squares of
integer and numeric inputs, float8 sums and M2 of float inputs; min, max, arrays of distinct
values) in a state table, and published from them: the buckets
fully inside the window from the state, the window's oldest (partial) bucket from raw rows.

This module only writes SQL text (no connection, no pipectl schema): `defining_query` is the
full recompute the summary stands for (what `pipectl audit` compares with); `state_select`
aggregates raw rows into bucket states; `publish_select` merges states into the summary's rows.
pipectl/store/incremental.py runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from pipectl.config import (
    IncrementalAggregate,
    IncrementalCondition,
    IncrementalConfig,
    StepConfig,
)
from pipectl.identifiers import quote_ident

REFERENCE = "$1::timestamptz"
"""The reference time (now() of the refresh) in `defining_query`."""

_VARIANCE = ("stddev", "stddev_samp", "stddev_pop", "variance", "var_samp", "var_pop")
_DISTINCT = ("count_distinct", "array_distinct")
_FLOAT_TYPES = ("double precision", "real")
Floats = frozenset[int]
"""Indices of the aggregates kept as float8 partials (see `float_aggregates`)."""


def float_aggregates(inc: IncrementalConfig, types: Sequence[str]) -> Floats:
    """The sum, avg and variance aggregates whose result (the published column's type, in
    `types`: keys first) is a float: their input is a float, and PostgreSQL computes them in
    float8 arithmetic, so their partials are float8 too: count, sum and, for a variance, the
    sum of squared deviations from the bucket's mean (M2, from var_pop: stable, unlike a sum
    of squares). Integer and numeric inputs keep exact numeric partials. float8 arithmetic
    is what made a refresh 4x cheaper per row than numeric (bench/FINDINGS.md)."""
    offset = len(inc.keys)
    return frozenset(
        i
        for i, agg in enumerate(inc.aggregates)
        if (agg.fn in ("sum", "avg") or agg.fn in _VARIANCE) and types[offset + i] in _FLOAT_TYPES
    )


def config_of(step: StepConfig) -> IncrementalConfig:
    if step.incremental is None:
        raise ValueError(f"step {step.name} is not an incremental step")
    return step.incremental


def output_columns(step: StepConfig) -> list[str]:
    """The summary's columns, in order: the keys, then the aggregates."""
    inc = config_of(step)
    return [k.name for k in inc.keys] + [a.name for a in inc.aggregates]


def interval_sql(window: timedelta) -> str:
    """A timedelta as an SQL interval: days stay calendar days ('30 days', as a view says)."""
    seconds = window.seconds + window.microseconds / 1_000_000
    return f"make_interval(days => {window.days}, secs => {seconds!r})"


def window_start(inc: IncrementalConfig, reference: str = REFERENCE) -> str:
    return f"({reference} - {interval_sql(inc.window)})"


def _input(agg: IncrementalAggregate, alias: str = "") -> str:
    assert agg.column is not None
    column = f"{alias}{quote_ident(agg.column)}"
    return f"{column}::{agg.cast}" if agg.cast else column


def _condition(cond: IncrementalCondition, alias: str = "") -> str:
    column = f"{alias}{quote_ident(cond.column)}"
    if cond.op == "is_null":
        return f"{column} IS NULL"
    if cond.op == "is_not_null":
        return f"{column} IS NOT NULL"
    # A number from the TOML file (int or finite float), never text: safe as a literal.
    assert isinstance(cond.value, int | float)
    assert not isinstance(cond.value, bool)
    return f"{column} {cond.op} {cond.value!r}"


def _key_exprs(inc: IncrementalConfig) -> list[str]:
    """Each key over the source row (alias src)."""
    time = f"src.{quote_ident(inc.time_column)}"
    out = []
    for key in inc.keys:
        if key.truncate is not None:
            out.append(f"date_trunc('{key.truncate}', {time})")
        else:
            assert key.column is not None
            out.append(f"src.{quote_ident(key.column)}")
    return out


def _columns(inc: IncrementalConfig, alias: str) -> str:
    """The source columns the summary reads (not `src.*`: wide rows stay out of the CTE)."""
    names = [inc.time_column]
    names += [k.column for k in inc.keys if k.column is not None]
    for agg in inc.aggregates:
        names += [agg.column] if agg.column is not None else []
        names += [agg.where.column] if agg.where is not None else []
    unique = list(dict.fromkeys(names))
    return ", ".join(f"{alias}.{quote_ident(n)}" for n in unique)


def _distinct_values(agg: IncrementalAggregate, rows: str) -> str:
    """FROM-clause tail giving `v`, the values an aggregate counts distinct, per row of `rows`."""
    assert agg.column is not None
    column = f"{rows}.{quote_ident(agg.column)}"
    if agg.element_key is None:
        return f"CROSS JOIN LATERAL (SELECT {column}) AS x(v)"
    key = agg.element_key.replace("'", "''")
    return (
        "CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof("
        f"{column}) = 'array' THEN {column} ELSE '[]'::jsonb END) AS e(elem) "
        f"CROSS JOIN LATERAL (SELECT e.elem ->> '{key}') AS x(v)"
    )


def _keys(n: int, alias: str = "") -> list[str]:
    return [f"{alias}_k{i}" for i in range(n)]


def _joined(n: int, left: str, right: str, extra: Sequence[str] = ()) -> str:
    parts = [f"{right}.{c} = {left}.{c}" for c in extra]
    parts += [f"{right}._k{i} IS NOT DISTINCT FROM {left}._k{i}" for i in range(n)]
    return " AND ".join(parts) or "true"


def _native(agg: IncrementalAggregate) -> str:
    """The aggregate as the defining query computes it, over `recent`."""
    if agg.fn == "count":
        return f"count({_input(agg)})" if agg.column else "count(*)"
    if agg.fn == "count_if":
        assert agg.where is not None
        return f"count(*) FILTER (WHERE {_condition(agg.where)})"
    return f"{agg.fn}({_input(agg)})"


def defining_query(step: StepConfig, *, reference: str = REFERENCE) -> str:
    """The full-recompute SQL of the summary, with `$1` (timestamptz) standing for now():
    the rows of `source` with `time_column >= $1 - window`, grouped by the keys, with native
    aggregates; the same columns (names, order and types) as the published summary. Run it
    under the agent's TimeZone (`[agent] timezone`) when the time column is timestamptz or
    compared with a timestamp column, as the refresh runs under it."""
    inc = config_of(step)
    nkeys = len(inc.keys)
    keys = _keys(nkeys)
    recent = (
        f"SELECT {', '.join(f'{e} AS {k}' for e, k in zip(_key_exprs(inc), keys, strict=True))}, "
        f"{_columns(inc, 'src')} FROM {inc.source.sql} AS src "
        f"WHERE src.{quote_ident(inc.time_column)} >= {window_start(inc, reference)}"
    )
    ctes = [f"recent AS ({recent})"]
    main_cols = list(keys)
    out: list[str] = [
        f"main.{k} AS {quote_ident(key.name)}" for k, key in zip(keys, inc.keys, strict=True)
    ]
    joins: list[str] = []
    for i, agg in enumerate(inc.aggregates):
        name = quote_ident(agg.name)
        if agg.fn in _DISTINCT and agg.element_key is not None:
            ctes.append(
                f"d{i} AS (SELECT {', '.join(_keys(nkeys, 'recent.'))}, "
                "array_agg(DISTINCT x.v ORDER BY x.v) AS v, count(DISTINCT x.v) AS n "
                f"FROM recent {_distinct_values(agg, 'recent')} WHERE x.v IS NOT NULL "
                f"GROUP BY {', '.join(_keys(nkeys, 'recent.'))})"
            )
            joins.append(f"LEFT JOIN d{i} ON {_joined(nkeys, 'main', f'd{i}')}")
            pick = (
                f"COALESCE(d{i}.n, 0)"
                if agg.fn == "count_distinct"
                else f"COALESCE(d{i}.v, '{{}}')"
            )
            out.append(f"{pick} AS {name}")
            continue
        if agg.fn == "count_distinct":
            expr = f"count(DISTINCT {_input(agg)})"
        elif agg.fn == "array_distinct":
            value = _input(agg)
            expr = (
                f"COALESCE(array_agg(DISTINCT {value} ORDER BY {value}) "
                f"FILTER (WHERE {value} IS NOT NULL), '{{}}')"
            )
        else:
            expr = _native(agg)
        main_cols.append(f"{expr} AS _a{i}")
        out.append(f"main._a{i} AS {name}")
    ctes.append(f"main AS (SELECT {', '.join(main_cols)} FROM recent GROUP BY {', '.join(keys)})")
    return f"WITH {', '.join(ctes)} SELECT {', '.join(out)} FROM main" + "".join(
        f" {j}" for j in joins
    )


# --- partial states ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StateColumn:
    name: str
    expr: str  # over a raw row (alias src) inside GROUP BY bucket, keys


def state_columns(inc: IncrementalConfig, floats: Floats = frozenset()) -> list[StateColumn]:
    """The per-(bucket, keys) partial state of each aggregate (distinct sets excluded: they
    are `_s{i}_d`, built apart); `floats` (float_aggregates) are kept in float8."""
    cols: list[StateColumn] = []
    for i, agg in enumerate(inc.aggregates):
        p = f"_s{i}"
        if agg.fn == "count":
            expr = f"count({_input(agg, 'src.')})" if agg.column else "count(*)"
            cols.append(StateColumn(f"{p}_n", expr))
        elif agg.fn == "count_if":
            assert agg.where is not None
            cols.append(
                StateColumn(f"{p}_n", f"count(*) FILTER (WHERE {_condition(agg.where, 'src.')})")
            )
        elif i in floats:
            value = f"({_input(agg, 'src.')})::float8"
            cols.append(StateColumn(f"{p}_c", f"count({value})"))
            cols.append(StateColumn(f"{p}_s", f"sum({value})"))
            if agg.fn in _VARIANCE:
                # M2 = var_pop * n: PostgreSQL's own stable float8 accumulation per bucket.
                cols.append(
                    StateColumn(f"{p}_q", f"coalesce(var_pop({value}) * count({value}), 0)")
                )
        elif agg.fn in ("sum", "avg"):
            # Integer and numeric inputs: PostgreSQL's own sum (bigint of int2/int4, numeric
            # of int8/numeric): exact, and no numeric conversion of every row.
            value = _input(agg, "src.")
            cols.append(StateColumn(f"{p}_c", f"count({value})"))
            cols.append(StateColumn(f"{p}_s", f"sum({value})"))
        elif agg.fn in _VARIANCE:
            value = f"src._n{i}"  # (input)::numeric, converted once per row in `rows`
            cols.append(StateColumn(f"{p}_c", f"count({value})"))
            cols.append(StateColumn(f"{p}_s", f"sum({value})"))
            if agg.fn in _VARIANCE:
                cols.append(StateColumn(f"{p}_q", f"sum({value} * {value})"))
        elif agg.fn in ("min", "max"):
            cols.append(StateColumn(f"{p}_m", f"{agg.fn}({_input(agg, 'src.')})"))
    return cols


MINUTE = "minute"
"""The grain of the minute states: the window's partial oldest bucket is published from them
(and from raw rows of less than a minute), not read again from the source every refresh."""


def state_select(
    inc: IncrementalConfig,
    where: str,
    arrived_from: str,
    open_from: str | None = None,
    floats: Floats = frozenset(),
    grain: str | None = None,
) -> str:
    """Bucket states of the raw rows matching `where` (over alias src): columns _bucket (the
    step's bucket, or `grain`), _k0.., the state columns, _s{i}_d for distinct sets, _rows
    (rows read), _open (the rows are at or after `open_from`: the part of the bucket the next
    refresh reads again; a bucket's rows before it are sealed, each state row covers one
    side) and _arrived (rows with time at or after `arrived_from`)."""
    nkeys = len(inc.keys)
    keys = _keys(nkeys)
    time = f"src.{quote_ident(inc.time_column)}"
    exprs = _key_exprs(inc)
    items = [f"date_trunc('{grain or inc.bucket}', {time}) AS _bucket"]
    items.append("false AS _open" if open_from is None else f"{time} >= {open_from} AS _open")
    items += [f"{e} AS {k}" for e, k in zip(exprs, keys, strict=True)]
    items.append(_columns(inc, "src"))
    items += [
        f"({_input(agg, 'src.')})::numeric AS _n{i}"
        for i, agg in enumerate(inc.aggregates)
        if agg.fn in _VARIANCE and i not in floats
    ]
    rows = f"SELECT {', '.join(items)} FROM {inc.source.sql} AS src WHERE {where}"
    group = ", ".join(["_bucket", "_open", *keys])
    states = [f"{c.expr} AS {c.name}" for c in state_columns(inc, floats)]
    counts = f"count(*) AS _rows, count(*) FILTER (WHERE {time} >= {arrived_from}) AS _arrived"
    # Distinct sets of a plain column: the rows are grouped by its value too (a hash
    # aggregate: an aggregate's DISTINCT would sort every row read), and the few sub-group
    # states merged per bucket and keys; those of a JSON array's elements need the rows again
    # (one row per element), from the materialized `rows`.
    plain = [
        (i, agg.column)
        for i, agg in enumerate(inc.aggregates)
        if agg.fn in _DISTINCT and agg.element_key is None and agg.column is not None
    ]
    elements = [
        i for i, a in enumerate(inc.aggregates) if a.fn in _DISTINCT and a.element_key is not None
    ]
    if not plain:
        main = f"SELECT {group}, {', '.join([*states, counts])} FROM rows AS src GROUP BY {group}"
        sub_cte: list[str] = []
    else:
        values = [f"src.{quote_ident(column)} AS _v{i}" for i, column in plain]
        sub = (
            f"SELECT {group}, {', '.join([*values, *states, counts])} FROM rows AS src "
            f"GROUP BY {', '.join([group, *(f'src.{quote_ident(c)}' for _, c in plain)])}"
        )
        source, merges = _merged_states(inc, floats, "sub", ["_bucket", "_open", *keys])
        sets = [
            f"array_agg(DISTINCT _v{i}) FILTER (WHERE _v{i} IS NOT NULL) AS _s{i}_d"
            for i, _ in plain
        ]
        main = (
            f"SELECT {group}, {', '.join([merges, *sets])}, sum(_rows)::bigint AS _rows, "
            f"sum(_arrived)::bigint AS _arrived FROM {source} GROUP BY {group}"
        )
        # Planned on its own: the window over its result (the merge of float variances)
        # would otherwise make sorting every row read look as cheap as hashing them.
        sub_cte = [f"sub AS MATERIALIZED ({sub})"]
    materialized = "MATERIALIZED " if elements else ""
    ctes = [f"rows AS {materialized}({rows})", *sub_cte, f"main AS ({main})"]
    out = [f"main.{c}" for c in ["_bucket", *keys]]
    out += [f"main.{c.name}" for c in state_columns(inc, floats)]
    joins = []
    for i, agg in enumerate(inc.aggregates):
        if agg.fn not in _DISTINCT:
            continue
        if i not in elements:
            out.append(f"COALESCE(main._s{i}_d, '{{}}') AS _s{i}_d")
            continue
        ctes.append(
            f"d{i} AS (SELECT rows._bucket, rows._open, {', '.join(_keys(nkeys, 'rows.'))}, "
            f"array_agg(DISTINCT x.v) AS v FROM rows {_distinct_values(agg, 'rows')} "
            f"WHERE x.v IS NOT NULL GROUP BY rows._bucket, rows._open, "
            f"{', '.join(_keys(nkeys, 'rows.'))})"
        )
        joins.append(f"LEFT JOIN d{i} ON {_joined(nkeys, 'main', f'd{i}', ['_bucket', '_open'])}")
        out.append(f"COALESCE(d{i}.v, '{{}}') AS _s{i}_d")
    out += ["main._rows", "main._open", "main._arrived"]
    return f"WITH {', '.join(ctes)} SELECT {', '.join(out)} FROM main" + "".join(
        f" {j}" for j in joins
    )


def stored_columns(inc: IncrementalConfig) -> list[str]:
    """The state table's columns (state_select's, without _arrived)."""
    cols = ["_bucket", *_keys(len(inc.keys)), *(c.name for c in state_columns(inc))]
    cols += [f"_s{i}_d" for i, a in enumerate(inc.aggregates) if a.fn in _DISTINCT]
    return [*cols, "_rows", "_open"]


def compact_sql(
    inc: IncrementalConfig, state_table: str, since: str, floats: Floats = frozenset()
) -> str:
    """Merge the sealed state rows of each (bucket, keys) from bucket `since` on into one:
    every refresh seals the part of a bucket it read up to its next re-read point, so a
    bucket being filled gathers a row per refresh. Merging states is exact (counts and sums
    add, min/max compare, distinct sets unite); it keeps publishing reading one row per
    bucket and group."""
    nkeys = len(inc.keys)
    keys = _keys(nkeys)
    group = ", ".join(["_bucket", *keys])
    source, merges = _merged_states(inc, floats, "victims", ["_bucket", *keys])
    merged = f"SELECT {group}, {merges}, sum(_rows)::bigint AS _rows FROM {source} GROUP BY {group}"
    ctes = [
        f"victims AS (DELETE FROM {state_table} WHERE NOT _open AND _bucket >= {since} "
        "RETURNING *)",
        f"merged AS ({merged})",
    ]
    out = [f"merged.{c}" for c in ["_bucket", *keys]]
    out += [f"merged.{c.name}" for c in state_columns(inc, floats)]
    sets, joins, values = _united_sets(inc, "victims", ["_bucket"])
    ctes += sets
    out += values
    out += ["merged._rows", "false"]
    columns = ", ".join(stored_columns(inc))
    return (
        f"WITH {', '.join(ctes)} INSERT INTO {state_table} ({columns}) "
        f"SELECT {', '.join(out)} FROM merged" + "".join(f" {j}" for j in joins)
    )


def _united_sets(
    inc: IncrementalConfig, rows: str, by: list[str]
) -> tuple[list[str], list[str], list[str]]:
    """The distinct sets of the state rows `rows` (a CTE) united per (`by`, keys), for a query
    whose merged states are `merged`: the CTEs d{i}, their LEFT JOINs onto merged, and the
    output columns _s{i}_d (an empty set where a group has none)."""
    nkeys = len(inc.keys)
    grouped = ", ".join([f"{rows}.{c}" for c in by] + _keys(nkeys, f"{rows}."))
    ctes, joins, values = [], [], []
    for i, agg in enumerate(inc.aggregates):
        if agg.fn not in _DISTINCT:
            continue
        ctes.append(
            f"d{i} AS (SELECT {grouped}, array_agg(DISTINCT x.v) AS v FROM {rows} "
            f"CROSS JOIN LATERAL unnest({rows}._s{i}_d) AS x(v) GROUP BY {grouped})"
        )
        joins.append(f"LEFT JOIN d{i} ON {_joined(nkeys, 'merged', f'd{i}', by)}")
        values.append(f"COALESCE(d{i}.v, '{{}}') AS _s{i}_d")
    return ctes, joins, values


def rollup_select(
    inc: IncrementalConfig, source: str, where: str, floats: Floats = frozenset()
) -> str:
    """The state rows of `source` (a CTE of state_select's or the state table's columns, finer
    buckets: the minute states) matching `where`, merged into the step's buckets: one row per
    (bucket, _open, keys), with stored_columns' columns. Merging is exact, as compact_sql's."""
    nkeys = len(inc.keys)
    keys = _keys(nkeys)
    cols = [c.name for c in state_columns(inc, floats)]
    dsets = [f"_s{i}_d" for i, a in enumerate(inc.aggregates) if a.fn in _DISTINCT]
    picked = ", ".join([*keys, *cols, *dsets, "_rows", "_open"])
    rows = (
        f"SELECT date_trunc('{inc.bucket}', f._bucket) AS _bucket, {picked} "
        f"FROM {source} AS f WHERE {where}"
    )
    group = ", ".join(["_bucket", "_open", *keys])
    item, merges = _merged_states(inc, floats, "r", ["_bucket", "_open", *keys])
    merged = f"SELECT {group}, {merges}, sum(_rows)::bigint AS _rows FROM {item} GROUP BY {group}"
    ctes = [f"r AS MATERIALIZED ({rows})", f"merged AS ({merged})"]
    out = [f"merged.{c}" for c in ["_bucket", *keys, *cols]]
    sets, joins, values = _united_sets(inc, "r", ["_bucket", "_open"])
    ctes += sets
    out += values
    out += ["merged._rows", "merged._open"]
    return f"WITH {', '.join(ctes)} SELECT {', '.join(out)} FROM merged" + "".join(
        f" {j}" for j in joins
    )


def _final(agg: IncrementalAggregate, i: int, floats: Floats) -> str:
    """The aggregate's value from the merged states (columns of `merged`)."""
    p = f"merged._s{i}"
    if i in floats and agg.fn in _VARIANCE:  # _q is M2, the squared deviations' sum
        if agg.fn in ("var_pop", "stddev_pop"):
            value = f"CASE WHEN {p}_c > 0 THEN {p}_q / {p}_c END"
        else:
            value = f"CASE WHEN {p}_c > 1 THEN {p}_q / ({p}_c - 1) END"
        return f"sqrt({value})" if agg.fn.startswith("stddev") else value
    if agg.fn in ("count", "count_if"):
        return f"{p}_n"
    if agg.fn == "sum":
        return f"CASE WHEN {p}_c > 0 THEN {p}_s END"
    if agg.fn == "avg":
        total = f"{p}_s" if i in floats else f"{p}_s::numeric"  # a bigint sum: no int division
        return f"{total} / NULLIF({p}_c, 0)"
    if agg.fn in ("min", "max"):
        return f"{p}_m"
    if agg.fn == "count_distinct":
        return f"COALESCE(m{i}.n, 0)"
    if agg.fn == "array_distinct":
        return f"COALESCE(m{i}.v, '{{}}')"
    spread = f"({p}_c * {p}_q - {p}_s * {p}_s)"
    if agg.fn in ("var_pop", "stddev_pop"):
        value = f"CASE WHEN {p}_c > 0 THEN {spread} / ({p}_c * {p}_c) END"
    else:
        value = f"CASE WHEN {p}_c > 1 THEN {spread} / ({p}_c * ({p}_c - 1)) END"
    return f"sqrt({value})" if agg.fn.startswith("stddev") else value


def _merge(name: str) -> str:
    kind = name.rsplit("_", 1)[1]
    if kind == "m":
        raise AssertionError("min/max merge by their function")
    return f"sum({name})::bigint" if kind in ("n", "c") else f"sum({name})"


def _merged_states(
    inc: IncrementalConfig, floats: Floats, source: str, group: Sequence[str]
) -> tuple[str, str]:
    """(a FROM item over `source` (a CTE of state rows), the merge expressions of every state
    column) for a GROUP BY `group`. Counts and sums add, min/max compare; the M2 of a float
    variance merges as sum(M2_i + n_i * (mean_i - mean)^2), `mean` the group's, which the FROM
    item adds as a window over `group` (Chan's combination: no cancellation)."""
    merges = []
    means = []
    for i, agg in enumerate(inc.aggregates):
        for c in state_columns(inc, floats):
            if not c.name.startswith(f"_s{i}_"):
                continue
            if c.name.endswith("_m"):
                merges.append(f"{agg.fn}({c.name}) AS {c.name}")
            elif c.name.endswith("_q") and i in floats:
                p = f"_s{i}"
                means.append(f"sum({p}_s) OVER w / NULLIF(sum({p}_c) OVER w, 0) AS {p}_mean")
                deviation = (
                    f"CASE WHEN {p}_c > 0 THEN {p}_c * power({p}_s / {p}_c - {p}_mean, 2)"
                    " ELSE 0 END"
                )
                merges.append(f"sum({p}_q + {deviation}) AS {c.name}")
            else:
                merges.append(f"{_merge(c.name)} AS {c.name}")
    if not means:
        return source, ", ".join(merges)
    window = ", ".join(group)
    item = (
        f"(SELECT *, {', '.join(means)} FROM {source}"
        f" WINDOW w AS (PARTITION BY {window})) AS {source}"
    )
    return item, ", ".join(merges)


def publish_select(
    inc: IncrementalConfig, state_table: str, edge_end: str, edge_rows: str, types: Sequence[str]
) -> str:
    """The summary's rows: states of full buckets (`_bucket >= $edge_end`, a parameter given
    by the caller as `edge_end`) merged with `edge_rows` (a state_select of the window's
    partial bucket), cast to the published table's column `types`."""
    nkeys = len(inc.keys)
    keys = _keys(nkeys)
    floats = float_aggregates(inc, types)
    cols = [c.name for c in state_columns(inc, floats)]
    dsets = [f"_s{i}_d" for i, a in enumerate(inc.aggregates) if a.fn in _DISTINCT]
    part_cols = ", ".join([*keys, *cols, *dsets])
    parts = (
        f"SELECT {part_cols} FROM {state_table} WHERE _bucket >= {edge_end} "
        f"UNION ALL SELECT {part_cols} FROM ({edge_rows}) AS edge"
    )
    source, merges = _merged_states(inc, floats, "parts", keys)
    merged = f"SELECT {', '.join(keys)}, {merges} FROM {source} GROUP BY {', '.join(keys)}"
    ctes = [f"parts AS MATERIALIZED ({parts})", f"merged AS ({merged})"]
    joins = []
    for i, agg in enumerate(inc.aggregates):
        if agg.fn not in _DISTINCT:
            continue
        # The sets' values made distinct by a hash (the sets hold no NULL), then ordered
        # per group: array_agg(DISTINCT v ORDER BY v) and count(DISTINCT v) of the query.
        ctes.append(
            f"m{i} AS (SELECT {', '.join(keys)}, array_agg(v ORDER BY v) AS v, count(*) AS n "
            f"FROM (SELECT DISTINCT {', '.join(keys)}, unnest(_s{i}_d) AS v FROM parts) AS x "
            f"GROUP BY {', '.join(keys)})"
        )
        joins.append(f"LEFT JOIN m{i} ON {_joined(nkeys, 'merged', f'm{i}')}")
    names = output_columns_of(inc)
    finals = [f"merged.{k}" for k in keys] + [
        _final(a, i, floats) for i, a in enumerate(inc.aggregates)
    ]
    out = [
        f"({expr})::{typ} AS {quote_ident(name)}"
        for expr, typ, name in zip(finals, types, names, strict=True)
    ]
    return f"WITH {', '.join(ctes)} SELECT {', '.join(out)} FROM merged" + "".join(
        f" {j}" for j in joins
    )


def output_columns_of(inc: IncrementalConfig) -> list[str]:
    return [k.name for k in inc.keys] + [a.name for a in inc.aggregates]


def signature(inc: IncrementalConfig) -> str:
    """What the state table's shape and content depend on: a change needs a reinstall."""
    import hashlib

    text = inc.model_dump_json(include={"source", "time_column", "bucket", "keys", "aggregates"})
    text += f"/state {STATE_FORMAT}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


STATE_FORMAT = 2
"""Bumped when the state tables change shape or meaning (2: minute states beside the
bucket states): a step installed before is asked to be installed again."""
