-- Publications and step state (issue 14 §2).
--
-- * A step's shown state is decided by its latest *decisive* run; an unfinished run shows
--   "running". Its latest unfinished run is one probe of runs_step_unfinished_idx.
-- * Each live agent records which steps and checks its config defines (its publications).
--   A definition no live agent publishes any more is retired: enabled = false (so every
--   reader that filters on enabled leaves it out) and retired_at set, with a
--   definition.retired event. Publishing it again brings it back. Agents publish through
--   set_publications() and retire through retire_unpublished(), both under one advisory
--   lock (store.PUBLISH_LOCK, which store.publish takes before it upserts the definitions),
--   so two agents reloading at once see each other's sets.

CREATE INDEX runs_step_unfinished_idx ON pipectl.runs (step, queued_at DESC, id DESC)
    WHERE status IN ('queued', 'running');
-- A step that has never run to a decision shows its newest skip: without this index that
-- probe walks every run of every step, newest first, for a step that was never skipped.
CREATE INDEX runs_step_skipped_idx ON pipectl.runs (step, queued_at DESC, id DESC)
    WHERE status = 'skipped';

ALTER TABLE pipectl.agents
    ADD COLUMN published_steps text[],
    ADD COLUMN published_checks text[];
COMMENT ON COLUMN pipectl.agents.published_steps IS
    'The steps this agent''s config defines (NULL: it has not published yet).';
COMMENT ON COLUMN pipectl.agents.published_checks IS
    'The checks this agent''s config defines (NULL: it has not published yet).';

ALTER TABLE pipectl.steps ADD COLUMN retired_at timestamptz;
ALTER TABLE pipectl.checks ADD COLUMN retired_at timestamptz;
COMMENT ON COLUMN pipectl.steps.retired_at IS
    'When the last live agent stopped publishing this step (NULL: published).';
COMMENT ON COLUMN pipectl.checks.retired_at IS
    'When the last live agent stopped publishing this check (NULL: published).';

-- Retiring (enabled -> false) and bringing back (enabled -> true while retired) have events
-- of their own; the guard does not add a definition.changed for the flag alone.
CREATE OR REPLACE FUNCTION pipectl.definitions_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pipectl AS $$
DECLARE
    changed text[] := '{}';
    now_row jsonb;
    was_row jsonb;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        now_row := to_jsonb(NEW);
        was_row := to_jsonb(OLD);
        SELECT coalesce(array_agg(col ORDER BY col), '{}') INTO changed
        FROM unnest(TG_ARGV) AS col
        WHERE (now_row -> col) IS DISTINCT FROM (was_row -> col);
        IF changed = ARRAY['enabled']
           AND (NEW.retired_at IS NOT NULL OR OLD.retired_at IS NOT NULL) THEN
            changed := '{}';
        END IF;
    END IF;
    IF NOT pipectl.is_owner(TG_RELID)
       AND (TG_OP = 'INSERT' OR cardinality(changed) > 0
            OR NEW.published_by IS DISTINCT FROM OLD.published_by
            OR NEW.published_at IS DISTINCT FROM OLD.published_at) THEN
        IF NEW.published_by IS NOT NULL AND NOT pipectl.is_own_agent(NEW.published_by) THEN
            RAISE EXCEPTION 'definitions are published under the publishing agent''s own id (% %)',
                TG_TABLE_NAME, NEW.name
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        NEW.published_at := now();
    END IF;
    IF cardinality(changed) > 0 THEN
        INSERT INTO pipectl.events (kind, subject, message, detail)
        VALUES ('definition.changed', NEW.name,
                format('%s %s: %s changed', rtrim(TG_TABLE_NAME, 's'), NEW.name,
                       array_to_string(changed, ', ')),
                jsonb_build_object('table', TG_TABLE_NAME, 'columns', to_jsonb(changed),
                                   'published_by', NEW.published_by));
    END IF;
    RETURN NEW;
END $$;

-- Record what `agent` (one of this session's user's live agents) publishes, and bring back
-- the definitions it publishes that were retired. Call after upserting the definitions.
CREATE FUNCTION pipectl.set_publications(agent uuid, steps text[], checks text[])
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pipectl AS $$
DECLARE
    agent_name text;
    back record;
BEGIN
    IF NOT pipectl.is_own_agent(agent) THEN
        RAISE EXCEPTION 'publications are recorded by a live agent of % under its own id', session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF steps IS NULL OR checks IS NULL OR array_position(steps, NULL) IS NOT NULL
       OR array_position(checks, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'set_publications: steps and checks are arrays of names'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(1886418274);  -- store.PUBLISH_LOCK ("ppub")
    UPDATE pipectl.agents a SET published_steps = steps, published_checks = checks
    WHERE a.id = agent RETURNING a.name INTO agent_name;
    FOR back IN
        UPDATE pipectl.steps s SET retired_at = NULL
        WHERE s.name = ANY(steps) AND s.retired_at IS NOT NULL
        RETURNING s.name
    LOOP
        INSERT INTO pipectl.events (kind, subject, message, detail)
        VALUES ('definition.published', back.name,
                format('step %s published again by agent %s', back.name, agent_name),
                jsonb_build_object('table', 'steps', 'agent_id', agent));
    END LOOP;
    FOR back IN
        UPDATE pipectl.checks c SET retired_at = NULL
        WHERE c.name = ANY(checks) AND c.retired_at IS NOT NULL
        RETURNING c.name
    LOOP
        INSERT INTO pipectl.events (kind, subject, message, detail)
        VALUES ('definition.published', back.name,
                format('check %s published again by agent %s', back.name, agent_name),
                jsonb_build_object('table', 'checks', 'agent_id', agent));
    END LOOP;
END $$;

-- Retire the definitions no live agent publishes: enabled = false, retired_at = now(), a
-- definition.retired event each. Nothing is retired while a live agent has not published
-- yet (it is starting: its set is unknown). Returns what was retired.
CREATE FUNCTION pipectl.retire_unpublished()
RETURNS TABLE (tbl text, name text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pipectl AS $$
#variable_conflict use_column
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pipectl.agents a
        WHERE a.db_user = session_user AND a.stopped_at IS NULL AND a.lost_at IS NULL
    ) THEN
        RAISE EXCEPTION 'definitions are retired by a live agent (none of % is registered)', session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM pg_advisory_xact_lock(1886418274);  -- store.PUBLISH_LOCK ("ppub")
    IF EXISTS (
        SELECT 1 FROM pipectl.agents a
        WHERE a.stopped_at IS NULL AND a.lost_at IS NULL
          AND (a.published_steps IS NULL OR a.published_checks IS NULL)
    ) THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH live AS (
        SELECT coalesce(array_agg(DISTINCT s), '{}') AS names
        FROM pipectl.agents a, unnest(a.published_steps) AS s
        WHERE a.stopped_at IS NULL AND a.lost_at IS NULL
    ), retired AS (
        UPDATE pipectl.steps x SET enabled = false, retired_at = now()
        FROM live
        WHERE x.retired_at IS NULL AND NOT (x.name = ANY(live.names))
        RETURNING x.name
    ), logged AS (
        INSERT INTO pipectl.events (kind, subject, message, detail)
        SELECT 'definition.retired', r.name,
               format('step %s retired: no live agent publishes it', r.name),
               jsonb_build_object('table', 'steps')
        FROM retired r
    )
    SELECT 'steps'::text, r.name FROM retired r;
    RETURN QUERY
    WITH live AS (
        SELECT coalesce(array_agg(DISTINCT c), '{}') AS names
        FROM pipectl.agents a, unnest(a.published_checks) AS c
        WHERE a.stopped_at IS NULL AND a.lost_at IS NULL
    ), retired AS (
        UPDATE pipectl.checks x SET enabled = false, retired_at = now()
        FROM live
        WHERE x.retired_at IS NULL AND NOT (x.name = ANY(live.names))
        RETURNING x.name
    ), logged AS (
        INSERT INTO pipectl.events (kind, subject, message, detail)
        SELECT 'definition.retired', r.name,
               format('check %s retired: no live agent publishes it', r.name),
               jsonb_build_object('table', 'checks')
        FROM retired r
    )
    SELECT 'checks'::text, r.name FROM retired r;
END $$;
