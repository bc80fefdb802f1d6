-- Indexes that keep the APES preset's probes off full table scans. Optional: upstream indexes
-- prompt_improvement_sessions.session_timestamp, but the preset's checks read created_at.
-- Built CONCURRENTLY (no write lock on a live table), so each statement runs on its own,
-- outside a transaction: `pipectl db apes --indexes` does that. Safe to run again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_sessions_created_at
    ON public.prompt_improvement_sessions (created_at);
-- The freshness checks of the two other key entities (rule_combinations is updated in place,
-- discovered_patterns is appended by the pattern miner).
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_rule_combinations_updated_at
    ON public.rule_combinations (updated_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_discovered_patterns_discovered_at
    ON public.discovered_patterns (discovered_at);
