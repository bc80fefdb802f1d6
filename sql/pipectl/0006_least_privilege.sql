-- Least privilege (issue 13 §2). Each role may do its job and nothing more, enforced here:
--   * the audit trail (events) is append-only; only retention deletes, through prune();
--   * an event a role inserts names its own database user, or the requester of a request
--     its agent holds; request.* events come from the requests trigger alone;
--   * requests: an operator files them (column grants in roles.sql), everything else about
--     them (claim, outcome, detail) is written by the agent that holds the claim;
--   * definitions are published under the publishing agent's own id, at the server's time,
--     and a changed definition leaves an audit event;
--   * pausing and silencing go through functions that check a claimed request asked for it
--     (a silence ends within 30 days of its request);
--   * before PostgreSQL 17, the agent refreshes listed summaries through refresh_summary()
--     instead of owning them (which let it drop them or grant them away).
-- Grants themselves are in roles.sql (re-applied by every `pipectl db upgrade`). The checks
-- below apply to every role that is not the owner of the table: the owner (who runs
-- `pipectl db upgrade`) and the definer functions it owns are trusted.

-- Whether the current user owns (or is a member of the owner of) a relation. Inside a
-- SECURITY DEFINER function current_user is the function's owner.
-- (The two helpers run as the caller, from guards whose search_path is pinned; a SET clause
-- of their own would cost every row that fires a guard.)
CREATE FUNCTION pipectl.is_owner(relation oid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')
    FROM pg_catalog.pg_class c WHERE c.oid = relation
$$;

-- Whether an agent row was registered by this session's database user and is not lost.
CREATE FUNCTION pipectl.is_own_agent(agent uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM pipectl.agents a
        WHERE a.id = agent AND a.db_user = session_user AND a.lost_at IS NULL
    )
$$;

-- ----------------------------------------------------------------------------- events

CREATE FUNCTION pipectl.events_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pipectl AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'the audit trail is append-only: pipectl.events rows are never changed'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF pipectl.is_owner(TG_RELID) THEN
        RETURN NEW;
    END IF;
    IF NEW.kind LIKE 'request.%' THEN
        RAISE EXCEPTION 'request.* events are recorded by PostgreSQL when a request is filed or finished'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.actor = session_user THEN
        RETURN NEW;
    END IF;
    -- Acting for a requester: the request is open and held by one of this user's agents.
    IF jsonb_typeof(NEW.detail -> 'request_id') = 'number' AND EXISTS (
        SELECT 1 FROM pipectl.requests q
        WHERE q.id::numeric = (NEW.detail ->> 'request_id')::numeric
          AND q.requested_by = NEW.actor AND q.done_at IS NULL
          AND pipectl.is_own_agent(q.claimed_by)
    ) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'an event names the database user who wrote it (%), or the requester of an open request an agent of % holds',
        session_user, session_user
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER events_guard BEFORE INSERT OR UPDATE ON pipectl.events
    FOR EACH ROW EXECUTE FUNCTION pipectl.events_guard();

-- --------------------------------------------------------------------------- requests

-- Who asked is what PostgreSQL says; a new request starts queued with nothing pre-filled.
CREATE OR REPLACE FUNCTION pipectl.request_stamp() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.requested_by := session_user;
    NEW.created_at := now();
    NEW.claimed_by := NULL;
    NEW.claimed_at := NULL;
    NEW.attempts := 0;
    NEW.done_at := NULL;
    NEW.outcome := NULL;
    NEW.detail := NULL;
    RETURN NEW;
END $$;

-- The agent columns (claim, outcome) move only as the agent that holds the claim says.
CREATE FUNCTION pipectl.requests_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pipectl AS $$
BEGIN
    IF pipectl.is_owner(TG_RELID) THEN
        RETURN NEW;
    END IF;
    IF OLD.done_at IS NOT NULL THEN
        RAISE EXCEPTION 'request % is finished; its outcome is final', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.claimed_by IS NOT NULL AND NEW.claimed_by IS DISTINCT FROM OLD.claimed_by
       AND NOT pipectl.is_own_agent(NEW.claimed_by) THEN
        RAISE EXCEPTION 'an agent claims requests under its own id only (request %)', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.done_at IS NOT NULL THEN
        IF NOT pipectl.is_own_agent(OLD.claimed_by) THEN
            RAISE EXCEPTION 'only the agent holding request % records its outcome', OLD.id
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    ELSIF NEW.outcome IS NOT NULL OR NEW.detail IS DISTINCT FROM OLD.detail THEN
        RAISE EXCEPTION 'the outcome of request % is written when it is finished', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER requests_guard BEFORE UPDATE ON pipectl.requests
    FOR EACH ROW EXECUTE FUNCTION pipectl.requests_guard();

-- ------------------------------------------------------------------------ definitions

-- Publishing steps and checks is the agent's job; it does so under its own id, at the
-- server's time, and a changed definition (the trigger's arguments are the columns that
-- define it) is recorded in the audit trail with the database user who changed it.
CREATE FUNCTION pipectl.definitions_guard() RETURNS trigger
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
-- Only statements that set a defining or publishing column fire it: recording a result
-- (status, last_value, ...) or the next run time does not pay for it.
CREATE TRIGGER steps_guard BEFORE INSERT OR UPDATE OF
        kind, relation, sql, schedule, depends_on, description, definition, enabled,
        published_by, published_at
    ON pipectl.steps
    FOR EACH ROW EXECUTE FUNCTION pipectl.definitions_guard(
        'kind', 'relation', 'sql', 'schedule', 'depends_on', 'description', 'definition',
        'enabled');
CREATE TRIGGER checks_guard BEFORE INSERT OR UPDATE OF
        kind, target, sql, schedule, description, definition, enabled, published_by,
        published_at
    ON pipectl.checks
    FOR EACH ROW EXECUTE FUNCTION pipectl.definitions_guard(
        'kind', 'target', 'sql', 'schedule', 'description', 'definition', 'enabled');

-- ------------------------------------------------------------ pausing and silencing

-- The open request of `kind` for `target`, by `requester` with `reason`, that an agent of
-- this session's user holds: the only authority to pause, resume, silence or unsilence.
CREATE FUNCTION pipectl.held_request(kind text, target text, requester text, reason text)
RETURNS pipectl.requests
LANGUAGE sql STABLE SET search_path = pg_catalog, pipectl AS $$
    SELECT q.* FROM pipectl.requests q
    WHERE q.kind = held_request.kind AND q.target = held_request.target
      AND q.requested_by = requester AND q.reason = held_request.reason
      AND q.done_at IS NULL AND pipectl.is_own_agent(q.claimed_by)
    ORDER BY q.created_at DESC
    LIMIT 1
$$;

CREATE FUNCTION pipectl.set_step_paused(step text, paused boolean, requester text, reason text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pipectl AS $$
DECLARE
    asked pipectl.requests;
BEGIN
    asked := pipectl.held_request(CASE WHEN paused THEN 'pause' ELSE 'resume' END, step,
                                  requester, reason);
    IF asked.id IS NULL THEN
        RAISE EXCEPTION 'no open % request for step % by % is held by an agent of %',
            CASE WHEN paused THEN 'pause' ELSE 'resume' END, step, requester, session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE pipectl.steps s
    SET paused = set_step_paused.paused,
        paused_by = CASE WHEN set_step_paused.paused THEN requester END,
        paused_at = CASE WHEN set_step_paused.paused THEN now() END,
        paused_reason = CASE WHEN set_step_paused.paused THEN set_step_paused.reason END
    WHERE s.name = step;
    RETURN FOUND;
END $$;

CREATE FUNCTION pipectl.set_check_silence(
    check_name text, until timestamptz, requester text, reason text
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pipectl AS $$
DECLARE
    asked pipectl.requests;
BEGIN
    asked := pipectl.held_request(CASE WHEN until IS NULL THEN 'unsilence' ELSE 'silence' END,
                                  check_name, requester, reason);
    IF asked.id IS NULL THEN
        RAISE EXCEPTION 'no open % request for check % by % is held by an agent of %',
            CASE WHEN until IS NULL THEN 'unsilence' ELSE 'silence' END, check_name, requester,
            session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF until IS NOT NULL
       AND NOT (until > asked.created_at AND until <= asked.created_at + interval '30 days') THEN
        RAISE EXCEPTION 'a silence ends within 30 days of its request (request % was filed at %)',
            asked.id, asked.created_at
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE pipectl.checks c
    SET silenced_until = until,
        silenced_by = CASE WHEN until IS NOT NULL THEN requester END,
        silence_reason = CASE WHEN until IS NOT NULL THEN set_check_silence.reason END
    WHERE c.name = check_name;
    RETURN FOUND;
END $$;

-- -------------------------------------------------------------------------- retention

-- One batch of retention: rows older than `age` (finished runs and requests, stopped or
-- lost agents). The audit trail (events, requests) is kept at least 7 days whatever `age`
-- says, so a stolen agent password cannot erase the record of what it just did.
CREATE FUNCTION pipectl.prune(kind text, age interval, batch integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pipectl AS $$
DECLARE
    cutoff timestamptz;
    deleted bigint;
BEGIN
    IF age IS NULL OR age < interval '0' OR batch IS NULL OR batch NOT BETWEEN 1 AND 50000 THEN
        RAISE EXCEPTION 'prune: age must be 0 or more and batch from 1 to 50000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF kind IN ('events', 'requests') THEN
        age := greatest(age, interval '7 days');
    END IF;
    cutoff := now() - age;
    CASE kind
    WHEN 'runs' THEN
        DELETE FROM pipectl.runs WHERE id IN (
            SELECT id FROM pipectl.runs
            WHERE queued_at < cutoff AND status NOT IN ('queued', 'running') LIMIT batch);
    WHEN 'results' THEN
        DELETE FROM pipectl.check_results WHERE id IN (
            SELECT id FROM pipectl.check_results WHERE observed_at < cutoff LIMIT batch);
    WHEN 'samples' THEN
        DELETE FROM pipectl.samples WHERE ctid IN (
            SELECT ctid FROM pipectl.samples WHERE ts < cutoff LIMIT batch);
    WHEN 'events' THEN
        DELETE FROM pipectl.events WHERE id IN (
            SELECT id FROM pipectl.events WHERE at < cutoff LIMIT batch);
    WHEN 'requests' THEN
        DELETE FROM pipectl.requests WHERE id IN (
            SELECT id FROM pipectl.requests
            WHERE created_at < cutoff AND done_at IS NOT NULL LIMIT batch);
    WHEN 'agents' THEN
        DELETE FROM pipectl.agents WHERE id IN (
            SELECT id FROM pipectl.agents
            WHERE last_seen < cutoff AND (stopped_at IS NOT NULL OR lost_at IS NOT NULL)
            LIMIT batch);
    ELSE
        RAISE EXCEPTION 'prune: unknown kind % (runs, results, samples, events, requests, agents)',
            kind
            USING ERRCODE = 'insufficient_privilege';
    END CASE;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END $$;

-- ----------------------------------------------------------------------- summaries

-- Materialized views the agent may refresh through refresh_summary() on PostgreSQL < 17,
-- where REFRESH needs ownership (17+ has the MAINTAIN privilege). Listed by whoever owns
-- the schema (`pipectl db apes --materialized` lists the APES summaries).
CREATE TABLE pipectl.refreshable (
    schema_name     text NOT NULL,
    view_name       text NOT NULL,
    listed_by       text NOT NULL DEFAULT session_user,
    listed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, view_name)
);
COMMENT ON TABLE pipectl.refreshable IS
    'Materialized views pipectl_agent may refresh with pipectl.refresh_summary() (PostgreSQL < 17).';

CREATE FUNCTION pipectl.refresh_summary(schema_name text, view_name text, concurrent boolean)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pipectl AS $$
DECLARE
    view_owner oid;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pipectl.refreshable r
        WHERE r.schema_name = refresh_summary.schema_name AND r.view_name = refresh_summary.view_name
    ) THEN
        RAISE EXCEPTION 'materialized view %.% is not registered for refresh by pipectl_agent (pipectl.refreshable); its owner can list it, or run `pipectl db apes --materialized` for the APES summaries',
            quote_ident(schema_name), quote_ident(view_name)
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT c.relowner INTO view_owner
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = refresh_summary.schema_name AND c.relname = refresh_summary.view_name
      AND c.relkind = 'm';
    IF view_owner IS NULL THEN
        RAISE EXCEPTION 'materialized view %.% does not exist', quote_ident(schema_name),
            quote_ident(view_name)
            USING ERRCODE = 'undefined_table';
    END IF;
    IF NOT pg_has_role(current_user, view_owner, 'USAGE') THEN
        RAISE EXCEPTION 'cannot refresh %.%: it is owned by %, and refresh_summary runs as %; before PostgreSQL 17 the role that runs `pipectl db upgrade` must own the summaries',
            quote_ident(schema_name), quote_ident(view_name), pg_get_userbyid(view_owner),
            current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    EXECUTE format('REFRESH MATERIALIZED VIEW %s %I.%I',
                   CASE WHEN concurrent THEN 'CONCURRENTLY' ELSE '' END,
                   schema_name, view_name);
END $$;

-- Before PostgreSQL 17 `pipectl db apes --materialized` handed the summaries to
-- pipectl_agent. Take them back (where this user may) and list them instead.
DO $$
DECLARE
    summary record;
BEGIN
    IF current_setting('server_version_num')::int >= 170000
       OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pipectl_agent') THEN
        RETURN;
    END IF;
    FOR summary IN
        SELECT n.nspname, c.relname FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'm' AND c.relowner = 'pipectl_agent'::regrole
    LOOP
        BEGIN
            EXECUTE format('ALTER MATERIALIZED VIEW %I.%I OWNER TO %I', summary.nspname,
                           summary.relname, current_user);
            EXECUTE format('GRANT SELECT ON %I.%I TO pipectl_agent', summary.nspname,
                           summary.relname);
            INSERT INTO pipectl.refreshable (schema_name, view_name)
            VALUES (summary.nspname, summary.relname) ON CONFLICT DO NOTHING;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'pipectl_agent still owns %.% (%); a superuser or its owner should run `pipectl db upgrade`',
                summary.nspname, summary.relname, SQLERRM;
        END;
    END LOOP;
END $$;
