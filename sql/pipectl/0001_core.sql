-- pipectl's own schema: where the agent and the console meet.
-- Applied by `pipectl db upgrade` in one transaction; schema `pipectl` exists already.

-- Agents heartbeat here; a survivor uses last_seen to declare a peer lost.
CREATE TABLE pipectl.agents (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    host        text NOT NULL,
    pid         integer NOT NULL,
    version     text NOT NULL,
    db_user     text NOT NULL DEFAULT session_user,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    stopped_at  timestamptz,
    lost_at     timestamptz,
    heartbeat_seconds double precision NOT NULL DEFAULT 5,
    status_line text
);
CREATE INDEX agents_alive_idx ON pipectl.agents (last_seen DESC) WHERE stopped_at IS NULL AND lost_at IS NULL;

-- The steps and checks the agents run, published from their config so the console can show
-- them (SQL, dependencies, schedule) without reading any file. Paused/silenced state lives
-- here too, so it survives restarts and is shared by every agent.
CREATE TABLE pipectl.steps (
    name            text PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('matview', 'sql', 'view')),
    relation        text,
    sql             text,
    schedule        text,
    depends_on      text[] NOT NULL DEFAULT '{}',
    description     text NOT NULL DEFAULT '',
    definition      jsonb NOT NULL DEFAULT '{}',
    enabled         boolean NOT NULL DEFAULT true,
    paused          boolean NOT NULL DEFAULT false,
    paused_by       text,
    paused_at       timestamptz,
    paused_reason   text,
    next_run_at     timestamptz,
    published_by    uuid REFERENCES pipectl.agents (id) ON DELETE SET NULL,
    published_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pipectl.checks (
    name            text PRIMARY KEY,
    kind            text NOT NULL,
    target          text,
    sql             text,
    schedule        text,
    description     text NOT NULL DEFAULT '',
    definition      jsonb NOT NULL DEFAULT '{}',
    enabled         boolean NOT NULL DEFAULT true,
    status          text NOT NULL DEFAULT 'nodata'
                    CHECK (status IN ('ok', 'warn', 'fail', 'error', 'nodata')),
    status_since    timestamptz NOT NULL DEFAULT now(),
    pending_status  text,
    pending_count   integer NOT NULL DEFAULT 0,
    last_value      double precision,
    last_result_at  timestamptz,
    next_due        timestamptz,
    silenced_until  timestamptz,
    silenced_by     text,
    silence_reason  text,
    published_by    uuid REFERENCES pipectl.agents (id) ON DELETE SET NULL,
    published_at    timestamptz NOT NULL DEFAULT now()
);

-- One execution of a step. A scheduled tick is unique per step and scheduled time, so that
-- however many agents see the tick, one row (and one run) results.
CREATE TABLE pipectl.runs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    step            text NOT NULL,
    trigger         text NOT NULL CHECK (trigger IN ('schedule', 'manual', 'retry', 'upstream')),
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'skipped')),
    scheduled_for   timestamptz,
    requested_by    text,
    request_id      bigint,
    parent_run_id   bigint REFERENCES pipectl.runs (id) ON DELETE SET NULL,
    attempt         integer NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    agent_id        uuid REFERENCES pipectl.agents (id) ON DELETE SET NULL,
    queued_at       timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    rows            bigint,
    error           text,
    detail          jsonb NOT NULL DEFAULT '{}',
    trace_id        text,
    CHECK (finished_at IS NULL OR started_at IS NULL OR finished_at >= started_at)
);
CREATE UNIQUE INDEX runs_one_per_tick ON pipectl.runs (step, scheduled_for)
    WHERE trigger = 'schedule' AND attempt = 1;
CREATE INDEX runs_step_time_idx ON pipectl.runs (step, queued_at DESC);
CREATE INDEX runs_time_idx ON pipectl.runs (queued_at DESC);
CREATE INDEX runs_unfinished_idx ON pipectl.runs (agent_id) WHERE status IN ('queued', 'running');
CREATE INDEX runs_last_success_idx ON pipectl.runs (step, finished_at DESC) WHERE status = 'succeeded';

CREATE TABLE pipectl.check_results (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    check_name      text NOT NULL,
    status          text NOT NULL CHECK (status IN ('ok', 'warn', 'fail', 'error', 'nodata')),
    value           double precision,
    threshold       jsonb NOT NULL DEFAULT '{}',
    expected_low    double precision,
    expected_high   double precision,
    baseline        jsonb NOT NULL DEFAULT '{}',
    message         text NOT NULL DEFAULT '',
    silenced        boolean NOT NULL DEFAULT false,
    trigger         text NOT NULL DEFAULT 'schedule' CHECK (trigger IN ('schedule', 'manual', 'cli')),
    observed_at     timestamptz NOT NULL DEFAULT now(),
    duration_ms     double precision,
    agent_id        uuid REFERENCES pipectl.agents (id) ON DELETE SET NULL,
    trace_id        text
);
CREATE INDEX check_results_check_time_idx ON pipectl.check_results (check_name, observed_at DESC);
CREATE INDEX check_results_time_idx ON pipectl.check_results (observed_at DESC);

-- Time series for baselines and graphs. `source`: 'live' (measured on schedule), 'seed'
-- (history reconstructed from a table's own timestamps when a check starts without samples),
-- 'backfill' (measured while data was being backfilled) and 'manual' (measured by a manual
-- check or rerun). Baselines use live and seed points only, and skip points the detector
-- flagged (`anomaly`).
CREATE TABLE pipectl.samples (
    series          text NOT NULL,
    ts              timestamptz NOT NULL,
    value           double precision NOT NULL,
    labels          jsonb NOT NULL DEFAULT '{}',
    source          text NOT NULL DEFAULT 'live'
                    CHECK (source IN ('live', 'seed', 'backfill', 'manual')),
    anomaly         boolean NOT NULL DEFAULT false,
    PRIMARY KEY (series, ts)
);
CREATE INDEX samples_ts_idx ON pipectl.samples (ts);

-- Operator intent: a row survives agent restarts, so no request is lost.
CREATE TABLE pipectl.requests (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('rerun', 'check', 'pause', 'resume', 'silence', 'unsilence')),
    target          text NOT NULL CHECK (length(target) BETWEEN 1 AND 200),
    args            jsonb NOT NULL DEFAULT '{}',
    reason          text NOT NULL DEFAULT '' CHECK (length(reason) <= 2000),
    requested_by    text NOT NULL DEFAULT session_user,
    created_at      timestamptz NOT NULL DEFAULT now(),
    claimed_by      uuid REFERENCES pipectl.agents (id) ON DELETE SET NULL,
    claimed_at      timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    done_at         timestamptz,
    outcome         text CHECK (outcome IN ('succeeded', 'failed', 'rejected', 'cancelled')),
    detail          text
);
CREATE INDEX requests_open_idx ON pipectl.requests (id) WHERE done_at IS NULL;
CREATE INDEX requests_time_idx ON pipectl.requests (created_at DESC);

-- The audit trail and incident timeline.
CREATE TABLE pipectl.events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    kind            text NOT NULL,
    subject         text NOT NULL DEFAULT '',
    actor           text NOT NULL DEFAULT session_user,
    message         text NOT NULL DEFAULT '',
    detail          jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_time_idx ON pipectl.events (at DESC);
CREATE INDEX events_subject_idx ON pipectl.events (subject, at DESC);

-- Who asked is what PostgreSQL says, not what the client claims.
CREATE FUNCTION pipectl.request_stamp() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.requested_by := session_user;
    NEW.created_at := now();
    NEW.claimed_by := NULL;
    NEW.claimed_at := NULL;
    NEW.done_at := NULL;
    NEW.outcome := NULL;
    RETURN NEW;
END $$;
CREATE TRIGGER requests_stamp BEFORE INSERT ON pipectl.requests
    FOR EACH ROW EXECUTE FUNCTION pipectl.request_stamp();

-- Every request is audited and wakes the agents; every outcome wakes the consoles. Runs as
-- its owner so that an operator, who may only insert requests, still leaves an audit row.
CREATE FUNCTION pipectl.request_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pipectl AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO pipectl.events (kind, subject, actor, message, detail)
        VALUES ('request.' || NEW.kind, NEW.target, NEW.requested_by, NEW.reason,
                jsonb_build_object('request_id', NEW.id, 'args', NEW.args));
        PERFORM pg_notify('pipectl_requests', NEW.id::text);
    ELSIF NEW.done_at IS NOT NULL AND OLD.done_at IS NULL THEN
        INSERT INTO pipectl.events (kind, subject, actor, message, detail)
        VALUES ('request.done', NEW.target, NEW.requested_by, coalesce(NEW.detail, ''),
                jsonb_build_object('request_id', NEW.id, 'kind', NEW.kind, 'outcome', NEW.outcome));
    END IF;
    PERFORM pg_notify('pipectl_changes', json_build_object(
        'table', 'requests', 'id', NEW.id, 'kind', NEW.kind, 'target', NEW.target,
        'state', CASE WHEN NEW.done_at IS NOT NULL THEN coalesce(NEW.outcome, 'done')
                      WHEN NEW.claimed_at IS NOT NULL THEN 'claimed' ELSE 'queued' END)::text);
    RETURN NEW;
END $$;
CREATE TRIGGER requests_notify AFTER INSERT OR UPDATE ON pipectl.requests
    FOR EACH ROW EXECUTE FUNCTION pipectl.request_notify();

CREATE FUNCTION pipectl.run_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM pg_notify('pipectl_changes', json_build_object(
            'table', 'runs', 'id', NEW.id, 'step', NEW.step, 'status', NEW.status)::text);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER runs_notify AFTER INSERT OR UPDATE ON pipectl.runs
    FOR EACH ROW EXECUTE FUNCTION pipectl.run_notify();

CREATE FUNCTION pipectl.result_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pipectl_changes', json_build_object(
        'table', 'check_results', 'id', NEW.id, 'check', NEW.check_name, 'status', NEW.status)::text);
    RETURN NEW;
END $$;
CREATE TRIGGER check_results_notify AFTER INSERT ON pipectl.check_results
    FOR EACH ROW EXECUTE FUNCTION pipectl.result_notify();

CREATE FUNCTION pipectl.state_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pipectl_changes', json_build_object(
        'table', TG_TABLE_NAME, 'name', NEW.name)::text);
    RETURN NEW;
END $$;
CREATE TRIGGER steps_notify AFTER UPDATE OF paused, next_run_at, enabled ON pipectl.steps
    FOR EACH ROW EXECUTE FUNCTION pipectl.state_notify();
CREATE TRIGGER checks_notify AFTER UPDATE OF status, silenced_until ON pipectl.checks
    FOR EACH ROW EXECUTE FUNCTION pipectl.state_notify();
