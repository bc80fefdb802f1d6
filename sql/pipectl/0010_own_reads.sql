-- pipectl's own buffer lookups (issue 14 §2): a monitor must not fail the metric it disturbs.
-- The agent brackets each of its refreshes and check probes with the session's pending
-- statistics (pg_stat_get_xact_blocks_fetched / _hit, per relation, within the transaction)
-- and records what that transaction looked up here; the postgres cache check subtracts the
-- rows of its interval from pg_stat_database / pg_statio_user_tables before judging.
CREATE TABLE pipectl.own_reads (
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    relation  text NOT NULL,
    fetched   bigint NOT NULL CHECK (fetched >= 0),
    hit       bigint NOT NULL CHECK (hit BETWEEN 0 AND fetched),
    what      text NOT NULL
);
COMMENT ON TABLE pipectl.own_reads IS
    'Buffer lookups by pipectl itself (relation: schema.name; fetched = hit + read), per refresh or probe';
CREATE INDEX own_reads_at_idx ON pipectl.own_reads (at);

-- Retention: the agent deletes rows past an age (at least an hour, in batches), nothing else.
CREATE FUNCTION pipectl.prune_own_reads(age interval, batch integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pipectl AS $$
DECLARE
    deleted bigint;
BEGIN
    IF age IS NULL OR batch IS NULL OR batch NOT BETWEEN 1 AND 50000 THEN
        RAISE EXCEPTION 'prune_own_reads: age must be given and batch from 1 to 50000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM pipectl.own_reads WHERE ctid IN (
        SELECT ctid FROM pipectl.own_reads
        WHERE at < now() - greatest(age, interval '1 hour') LIMIT batch);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END $$;
