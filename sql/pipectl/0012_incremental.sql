-- Incremental summaries (issue 17 §2): a `kind = "incremental"` step keeps its summary as
-- per-bucket partial aggregates in a state table of the schema pipectl_incremental (one per
-- step, created by `pipectl db incremental STEP`, which replaces the materialized view by a
-- table of the same name and columns) and publishes the summary from them.
--
ALTER TABLE pipectl.steps DROP CONSTRAINT steps_kind_check;
ALTER TABLE pipectl.steps ADD CONSTRAINT steps_kind_check
    CHECK (kind IN ('matview', 'sql', 'view', 'incremental'));

-- incremental_steps: one row per installed step: where its source is, its state table, the
-- definition it was installed for, and where its refreshes are (watermark: the reference time
-- of the last refresh; reread_from: the bucket the next refresh re-reads from; published_at:
-- the reference time of the content published, which `pipectl audit` recomputes at).
CREATE TABLE pipectl.incremental_steps (
    step          text PRIMARY KEY,
    source_schema text NOT NULL,
    source_table  text NOT NULL,
    time_column   text NOT NULL,
    time_type     text NOT NULL CHECK (time_type IN ('timestamp without time zone',
                                                    'timestamp with time zone')),
    state_table   text NOT NULL,
    signature     text NOT NULL,
    installed_at  timestamptz NOT NULL DEFAULT now(),
    installed_by  text NOT NULL DEFAULT session_user,
    watermark     timestamptz,
    reread_from   timestamptz,
    published_at  timestamptz,
    time_zone     text,          -- the TimeZone the state's buckets were cut in
    refreshed_at  timestamptz,
    rows_read     bigint,
    rows_arrived  bigint
);
CREATE INDEX incremental_steps_source_idx
    ON pipectl.incremental_steps (source_schema, source_table, time_column);

COMMENT ON COLUMN pipectl.incremental_steps.reread_from IS
    'Times are timestamptz; a timestamp without time zone column''s values are stored as if UTC.';

-- The invalidation log: hours of a source's time column that rows were inserted, updated or
-- deleted in behind a step's reread_from (as TimescaleDB's invalidation log). The next refresh
-- of the step recomputes the buckets they touch from raw rows and deletes its entries.
-- lo = '-infinity' (a TRUNCATE) rebuilds the whole window.
CREATE TABLE pipectl.incremental_invalidations (
    -- No foreign key: its check would lock the step's row from the application's write,
    -- which could then wait for a refresh or fail while the step is being uninstalled.
    step      text NOT NULL,
    lo        timestamptz NOT NULL,
    hi        timestamptz NOT NULL,
    logged_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX incremental_invalidations_step_idx ON pipectl.incremental_invalidations (step);

-- The statement-level triggers `pipectl db incremental STEP --triggers` puts on a source
-- table call this with the time column's name. SECURITY DEFINER: the application's roles
-- write their tables as before and need no privilege on the pipectl schema; the fixed
-- search_path and TimeZone make it read the same for every writer (timestamp values are
-- taken as UTC, as incremental_steps stores them).
CREATE FUNCTION pipectl.log_invalidations() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pipectl
SET TimeZone = 'UTC'
AS $$
DECLARE
    col text := TG_ARGV[0];
    tables text[];
    transition text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO pipectl.incremental_invalidations (step, lo, hi)
        SELECT s.step, '-infinity', 'infinity' FROM pipectl.incremental_steps s
        WHERE s.source_schema = TG_TABLE_SCHEMA AND s.source_table = TG_TABLE_NAME
          AND s.time_column = col AND s.reread_from IS NOT NULL;
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pipectl.incremental_steps s
                   WHERE s.source_schema = TG_TABLE_SCHEMA AND s.source_table = TG_TABLE_NAME
                     AND s.time_column = col AND s.reread_from IS NOT NULL) THEN
        RETURN NULL;  -- nothing installed (yet), or never refreshed: nothing to log
    END IF;
    tables := CASE TG_OP WHEN 'INSERT' THEN ARRAY['new_rows']
                         WHEN 'DELETE' THEN ARRAY['old_rows']
                         ELSE ARRAY['old_rows', 'new_rows'] END;
    FOREACH transition IN ARRAY tables LOOP
        EXECUTE format(
            'INSERT INTO pipectl.incremental_invalidations (step, lo, hi) '
            'SELECT s.step, h.lo, h.lo + interval ''1 hour'' '
            'FROM pipectl.incremental_steps s '
            'CROSS JOIN LATERAL (SELECT DISTINCT date_trunc(''hour'', r.%1$I::timestamptz) AS lo '
            '                    FROM %2$I r WHERE r.%1$I::timestamptz < s.reread_from) h '
            'WHERE s.source_schema = $1 AND s.source_table = $2 AND s.time_column = $3',
            col, transition)
        USING TG_TABLE_SCHEMA, TG_TABLE_NAME, col;
    END LOOP;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION pipectl.log_invalidations() FROM PUBLIC;

-- The state tables: a schema of their own, so that the grants roles.sql re-applies to the
-- pipectl schema leave what `pipectl db incremental` granted on them alone.
CREATE SCHEMA IF NOT EXISTS pipectl_incremental;
