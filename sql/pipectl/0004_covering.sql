-- Covering indexes for time-series reads, so that a week of history is read from the index
-- alone (figures: python -m bench.console_queries, 2M results and 10M samples):
--   check_results by check and time: cache dips on the timeline, trends, check detail;
--   samples by series and time: cache history, baselines, graphs.
DROP INDEX pipectl.check_results_check_time_idx;
CREATE INDEX check_results_check_time_idx
    ON pipectl.check_results (check_name, observed_at DESC) INCLUDE (value, id);

ALTER TABLE pipectl.samples DROP CONSTRAINT samples_pkey;
ALTER TABLE pipectl.samples ADD PRIMARY KEY (series, ts) INCLUDE (value);

-- Index-only scans need the visibility map: vacuum these append-mostly tables after 1 % new
-- rows instead of the default 20 %.
ALTER TABLE pipectl.check_results SET (autovacuum_vacuum_insert_scale_factor = 0.01);
ALTER TABLE pipectl.samples SET (autovacuum_vacuum_insert_scale_factor = 0.01);
