-- Materialized APES summaries, refreshed by pipectl instead of recomputed on every read.
--
-- Replaces the upstream plain views of the same names with materialized views of the same
-- columns, so readers need no change. Each gets the unique index that
-- REFRESH MATERIALIZED VIEW CONCURRENTLY requires (readers are never blocked by a refresh).
-- Safe to run again: summaries that are already materialized are left as they are.
--
-- Run it after sql/apes/schema.sql (or against a deployed APES database), as the owner of the
-- APES tables, then `pipectl db upgrade`.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relname = 'rule_effectiveness_summary'
                 AND c.relkind = 'v') THEN
        DROP VIEW public.rule_effectiveness_summary;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relname = 'user_satisfaction_summary'
                 AND c.relkind = 'v') THEN
        DROP VIEW public.user_satisfaction_summary;
    END IF;
END $$;

CREATE MATERIALIZED VIEW IF NOT EXISTS public.rule_effectiveness_summary AS
SELECT
    rule_id,
    rule_name,
    COUNT(*) AS usage_count,
    AVG(improvement_score) AS avg_improvement,
    STDDEV(improvement_score) AS score_stddev,
    MIN(improvement_score) AS min_improvement,
    MAX(improvement_score) AS max_improvement,
    AVG(confidence_level) AS avg_confidence,
    AVG(execution_time_ms) AS avg_execution_time,
    COUNT(DISTINCT prompt_type) AS prompt_types_count
FROM public.rule_performance
WHERE created_at >= NOW() - INTERVAL '30 days'
GROUP BY rule_id, rule_name
ORDER BY avg_improvement DESC;

CREATE UNIQUE INDEX IF NOT EXISTS rule_effectiveness_summary_key
    ON public.rule_effectiveness_summary (rule_id, rule_name);

-- Same columns as upstream. rules_used is computed from the elements of the applied_rules
-- array, which is what upstream meant (its ->> on an array always gave NULL).
CREATE MATERIALIZED VIEW IF NOT EXISTS public.user_satisfaction_summary AS
WITH recent AS (
    SELECT DATE_TRUNC('day', created_at) AS feedback_date, user_rating, applied_rules
    FROM public.user_feedback
    WHERE created_at >= NOW() - INTERVAL '90 days'
), rules AS (
    SELECT r.feedback_date,
           ARRAY_AGG(DISTINCT e.elem ->> 'rule_id' ORDER BY e.elem ->> 'rule_id') AS rules_used
    FROM recent r
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(r.applied_rules) = 'array' THEN r.applied_rules ELSE '[]' END
    ) AS e(elem)
    WHERE e.elem ->> 'rule_id' IS NOT NULL
    GROUP BY r.feedback_date
)
SELECT
    recent.feedback_date,
    COUNT(*) AS total_feedback,
    AVG(recent.user_rating::FLOAT) AS avg_rating,
    COUNT(CASE WHEN recent.user_rating >= 4 THEN 1 END) AS positive_feedback,
    COUNT(CASE WHEN recent.user_rating <= 2 THEN 1 END) AS negative_feedback,
    COALESCE(rules.rules_used, '{}') AS rules_used
FROM recent
LEFT JOIN rules USING (feedback_date)
GROUP BY recent.feedback_date, rules.rules_used
ORDER BY feedback_date DESC;

CREATE UNIQUE INDEX IF NOT EXISTS user_satisfaction_summary_key
    ON public.user_satisfaction_summary (feedback_date);

-- Let pipectl's agent refresh the summaries and read the base tables. Refreshing needs
-- MAINTAIN (PostgreSQL 17+); older servers let only the owner refresh, so the summaries stay
-- with their owner and are listed in pipectl.refreshable, which the agent's
-- pipectl.refresh_summary() (run as the schema owner) refreshes and nothing more. Nothing
-- happens where the roles do not exist yet: run `pipectl db upgrade` first, then this again.
DO $$
DECLARE
    summary text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pipectl_agent') THEN
        RAISE NOTICE 'role pipectl_agent does not exist yet; grants skipped';
        RETURN;
    END IF;
    FOREACH summary IN ARRAY ARRAY['rule_effectiveness_summary', 'user_satisfaction_summary'] LOOP
        IF current_setting('server_version_num')::int >= 170000 THEN
            EXECUTE format('GRANT MAINTAIN ON public.%I TO pipectl_agent', summary);
            CONTINUE;
        END IF;
        -- Earlier versions handed the summaries to pipectl_agent: take them back.
        IF (SELECT relowner FROM pg_class WHERE oid = format('public.%I', summary)::regclass)
           = 'pipectl_agent'::regrole THEN
            BEGIN
                EXECUTE format('ALTER MATERIALIZED VIEW public.%I OWNER TO %I', summary,
                               current_user);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE WARNING 'pipectl_agent still owns public.% (%); run this as a superuser',
                    summary, SQLERRM;
            END;
        END IF;
        IF to_regclass('pipectl.refreshable') IS NULL THEN
            RAISE NOTICE 'pipectl.refreshable does not exist yet: run `pipectl db upgrade`, then this again';
        ELSE
            INSERT INTO pipectl.refreshable (schema_name, view_name)
            VALUES ('public', summary) ON CONFLICT DO NOTHING;
        END IF;
    END LOOP;
    GRANT USAGE ON SCHEMA public TO pipectl_agent;
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO pipectl_agent;
END $$;
