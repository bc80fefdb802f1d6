-- Pre-aggregated history for the console's week-long screens (figures: python -m
-- bench.console_queries, 1M runs, 2M results, 10M samples; both screens were ~60 ms p95):
--   samples_hourly: count and sum of every sample series per UTC hour, so the cache screen
--     reads 168 rows per series for a week instead of every sample;
--   cache.dip / cache.recovered events, written with each cache result that crosses its
--     target (pipectl/store/results.py), so the timeline reads events instead of walking a
--     week of check results per cache check.

CREATE TABLE pipectl.samples_hourly (
    series text NOT NULL,
    hour   timestamptz NOT NULL,
    n      bigint NOT NULL,
    total  double precision NOT NULL,
    PRIMARY KEY (series, hour) INCLUDE (n, total)
);
COMMENT ON TABLE pipectl.samples_hourly IS
    'Count and sum of pipectl.samples per series and UTC hour, kept by triggers on samples.';

-- Statement-level triggers with transition tables: a batch (an upsert of many samples, a
-- retention delete of thousands) touches each (series, hour) once. Ordered upserts so two
-- concurrent writers lock rollup rows in the same order. Runs as the owner: the agent role
-- writes samples, never the rollup directly.
CREATE FUNCTION pipectl.samples_rollup_add() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pipectl AS $$
BEGIN
    INSERT INTO pipectl.samples_hourly AS h (series, hour, n, total)
    SELECT series, date_trunc('hour', ts, 'UTC'), count(*), sum(value)
    FROM added GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (series, hour) DO UPDATE
        SET n = h.n + EXCLUDED.n, total = h.total + EXCLUDED.total;
    RETURN NULL;
END $$;

CREATE FUNCTION pipectl.samples_rollup_remove() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pipectl AS $$
BEGIN
    WITH gone AS (
        SELECT series, date_trunc('hour', ts, 'UTC') AS hour, count(*) AS n,
               sum(value) AS total
        FROM removed GROUP BY 1, 2 ORDER BY 1, 2
    )
    UPDATE pipectl.samples_hourly h SET n = h.n - gone.n, total = h.total - gone.total
    FROM gone WHERE h.series = gone.series AND h.hour = gone.hour;
    DELETE FROM pipectl.samples_hourly h
    WHERE h.n <= 0 AND (h.series, h.hour) IN (
        SELECT series, date_trunc('hour', ts, 'UTC') FROM removed
    );
    RETURN NULL;
END $$;

CREATE TRIGGER samples_rollup_insert AFTER INSERT ON pipectl.samples
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION pipectl.samples_rollup_add();
CREATE TRIGGER samples_rollup_delete AFTER DELETE ON pipectl.samples
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION pipectl.samples_rollup_remove();
-- An update (a point stored again for the same instant) removes the old value and adds the
-- new one, through the same two functions; either order gives the same rollup.
CREATE TRIGGER samples_rollup_update_old AFTER UPDATE ON pipectl.samples
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION pipectl.samples_rollup_remove();
CREATE TRIGGER samples_rollup_update_new AFTER UPDATE ON pipectl.samples
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION pipectl.samples_rollup_add();

INSERT INTO pipectl.samples_hourly (series, hour, n, total)
SELECT series, date_trunc('hour', ts, 'UTC'), count(*), sum(value)
FROM pipectl.samples GROUP BY 1, 2;

-- The crossings already in history, as the timeline computed them until now: a cache
-- result below the target its check applied (expected_low) after one at or above it (or
-- after none), and the first one back at or above it.
INSERT INTO pipectl.events (at, kind, subject, actor, message, detail)
SELECT x.observed_at,
       CASE WHEN x.value < x.target THEN 'cache.dip' ELSE 'cache.recovered' END,
       x.check_name, '',
       round((x.value * 100)::numeric, 1) || '% (target '
           || round((x.target * 100)::numeric, 1) || '%)',
       jsonb_build_object('to', CASE WHEN x.value < x.target THEN 'warn' ELSE 'ok' END,
                          'value', x.value, 'target', x.target, 'result_id', x.id)
FROM (
    SELECT r.id, r.check_name, r.observed_at, r.value, r.expected_low AS target,
           lag(r.value) OVER (PARTITION BY r.check_name ORDER BY r.observed_at) AS prev
    FROM pipectl.check_results r JOIN pipectl.checks c ON c.name = r.check_name
    WHERE c.kind = 'cache' AND r.value IS NOT NULL AND r.expected_low IS NOT NULL
) x
WHERE (x.value < x.target AND (x.prev IS NULL OR x.prev >= x.target))
   OR (x.value >= x.target AND x.prev < x.target);
