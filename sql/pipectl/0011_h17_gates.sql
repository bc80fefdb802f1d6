-- Gates (issue 17 §1): a step's refresh and its gate checks run in one transaction; when a
-- gate fails the transaction is rolled back and the run is recorded as 'held' (the old content
-- stays, the gate's evidence is in runs.detail). Operators file 'publish' requests to publish
-- a held step anyway (a run whose gates are measured but not enforced).
ALTER TABLE pipectl.runs DROP CONSTRAINT runs_status_check;
ALTER TABLE pipectl.runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'skipped', 'held'));

ALTER TABLE pipectl.requests DROP CONSTRAINT requests_kind_check;
ALTER TABLE pipectl.requests ADD CONSTRAINT requests_kind_check
    CHECK (kind IN ('rerun', 'check', 'pause', 'resume', 'silence', 'unsilence', 'publish'));

-- A held run decides a step's state like a failure does (the upstream gate, `status`, the
-- console): the decisive-run index takes it in.
DROP INDEX pipectl.runs_decisive_idx;
CREATE INDEX runs_decisive_idx ON pipectl.runs (step, finished_at DESC NULLS LAST, id DESC)
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'held');
