-- Indexes for the console's read models (figures: python -m bench.console).

-- A step's last failure (step detail screen) without walking its whole history when it rarely
-- fails: failures are few, so the index is small.
CREATE INDEX runs_failed_idx ON pipectl.runs (step, queued_at DESC) WHERE status = 'failed';

-- A step's latest decisive run in one index probe: the rerun dialog's "last run" column, and
-- the agent's upstream gate (store.latest_outcomes), which otherwise reads every run of the
-- upstream steps.
CREATE INDEX runs_decisive_idx ON pipectl.runs (step, finished_at DESC NULLS LAST, id DESC)
    WHERE status IN ('succeeded', 'failed', 'cancelled');
