-- Grants for pipectl's roles. Re-applied by every `pipectl db upgrade` (idempotent, in one
-- transaction), after the roles exist. PostgreSQL enforces these; the console only reflects
-- them. docs/operating.md lists the same grants as a table, and a test compares the two.
--   pipectl_viewer   read everything in the pipectl schema
--   pipectl_operator viewer + file requests (kind, target, args, reason: nothing else)
--   pipectl_agent    viewer + exactly what pipectl/store writes (column by column); the
--                    narrow writes (pause, silence, retention, refresh before PG 17) go
--                    through SECURITY DEFINER functions that check who asked
GRANT USAGE ON SCHEMA pipectl TO pipectl_viewer, pipectl_operator, pipectl_agent;
GRANT pipectl_viewer TO pipectl_operator;
GRANT pipectl_viewer TO pipectl_agent;

-- Start from nothing each time: grants only ever add, and earlier versions granted more.
-- (Revoking a table privilege also revokes it from every column.)
REVOKE ALL ON ALL TABLES IN SCHEMA pipectl FROM pipectl_viewer, pipectl_operator, pipectl_agent;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA pipectl FROM pipectl_viewer, pipectl_operator, pipectl_agent;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pipectl FROM PUBLIC, pipectl_viewer, pipectl_operator, pipectl_agent;

GRANT SELECT ON ALL TABLES IN SCHEMA pipectl TO pipectl_viewer;
-- The guards on events, requests, steps and checks run as whoever writes and ask these two
-- (read-only) questions.
GRANT EXECUTE ON FUNCTION pipectl.is_owner(oid), pipectl.is_own_agent(uuid) TO pipectl_viewer;

-- Operators file requests (with the trace context of the span that filed them). Identity
-- (id), authorship and time are PostgreSQL's; claim and outcome are the agent's.
GRANT INSERT (kind, target, args, reason, traceparent) ON pipectl.requests TO pipectl_operator;

-- The agent. db_user is session_user, by default and by the missing grant.
GRANT INSERT (id, name, host, pid, version, heartbeat_seconds),
      UPDATE (last_seen, status_line, stopped_at, lost_at)
    ON pipectl.agents TO pipectl_agent;
GRANT INSERT (name, kind, relation, sql, schedule, depends_on, description, definition, enabled,
              published_by, published_at),
      UPDATE (kind, relation, sql, schedule, depends_on, description, definition, enabled,
              published_by, published_at, next_run_at)
    ON pipectl.steps TO pipectl_agent;
GRANT INSERT (name, kind, target, sql, schedule, description, definition, enabled,
              published_by, published_at),
      UPDATE (kind, target, sql, schedule, description, definition, enabled,
              published_by, published_at, next_due, status, status_since, pending_status,
              pending_count, last_value, last_result_at)
    ON pipectl.checks TO pipectl_agent;
GRANT INSERT, UPDATE ON pipectl.runs TO pipectl_agent;
GRANT INSERT ON pipectl.check_results TO pipectl_agent;
GRANT INSERT, UPDATE (value, labels, source, anomaly) ON pipectl.samples TO pipectl_agent;
GRANT INSERT (at, kind, subject, actor, message, detail) ON pipectl.events TO pipectl_agent;
GRANT UPDATE (claimed_by, claimed_at, attempts, done_at, outcome, detail)
    ON pipectl.requests TO pipectl_agent;
GRANT INSERT (relation, fetched, hit, what) ON pipectl.own_reads TO pipectl_agent;
-- Incremental summaries: the agent moves a step's watermark and consumes its invalidations;
-- installing a step (`pipectl db incremental`) is the owner's.
GRANT UPDATE (watermark, reread_from, published_at, time_zone, refreshed_at, rows_read,
              rows_arrived)
    ON pipectl.incremental_steps TO pipectl_agent;
GRANT DELETE ON pipectl.incremental_invalidations TO pipectl_agent;
-- State tables of incremental steps; each gets its grants when installed.
GRANT USAGE ON SCHEMA pipectl_incremental TO pipectl_viewer, pipectl_agent;

GRANT EXECUTE ON FUNCTION pipectl.set_step_paused(text, boolean, text, text),
                          pipectl.set_check_silence(text, timestamptz, text, text),
                          pipectl.prune(text, interval, integer),
                          pipectl.refresh_summary(text, text, boolean),
                          pipectl.set_publications(uuid, text[], text[]),
                          pipectl.retire_unpublished(),
                          pipectl.prune_own_reads(interval, integer)
    TO pipectl_agent;
