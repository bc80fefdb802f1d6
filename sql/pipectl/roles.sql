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
-- The agent gets exactly what pipectl/store writes: audit rows are never rewritten, an
-- agent never files a request, published definitions are never deleted. The REVOKEs take
-- back what earlier versions granted more broadly (GRANTs only ever add).
GRANT INSERT, UPDATE, DELETE ON pipectl.agents, pipectl.runs, pipectl.samples TO pipectl_agent;
GRANT INSERT, UPDATE ON pipectl.steps, pipectl.checks TO pipectl_agent;
GRANT INSERT, DELETE ON pipectl.check_results, pipectl.events TO pipectl_agent;
GRANT UPDATE, DELETE ON pipectl.requests TO pipectl_agent;
REVOKE DELETE, TRUNCATE ON pipectl.steps, pipectl.checks FROM pipectl_agent;
REVOKE UPDATE, TRUNCATE ON pipectl.check_results, pipectl.events FROM pipectl_agent;
REVOKE INSERT, TRUNCATE ON pipectl.requests FROM pipectl_agent;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON pipectl.schema_migrations FROM pipectl_agent;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA pipectl TO pipectl_agent;
