-- Grants for pipectl's roles. Re-applied by every `pipectl db upgrade` (idempotent), after the
-- roles exist. PostgreSQL enforces these; the console only reflects them.
--   pipectl_viewer   read everything in the pipectl schema
--   pipectl_operator viewer + file requests (rerun, check, pause, resume, silence)
--   pipectl_agent    viewer + record runs, results, samples, events; claim requests
GRANT USAGE ON SCHEMA pipectl TO pipectl_viewer, pipectl_operator, pipectl_agent;
GRANT pipectl_viewer TO pipectl_operator;
GRANT pipectl_viewer TO pipectl_agent;
GRANT SELECT ON ALL TABLES IN SCHEMA pipectl TO pipectl_viewer;
GRANT INSERT ON pipectl.requests TO pipectl_operator;
GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pipectl TO pipectl_agent;
REVOKE UPDATE, DELETE ON pipectl.schema_migrations FROM pipectl_agent;
REVOKE INSERT ON pipectl.schema_migrations FROM pipectl_agent;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA pipectl TO pipectl_agent;
