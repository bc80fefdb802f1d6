-- The APES schema as deployed upstream (database/schema.sql of the APES project, plus the
-- per-request table of its MCP server), for the demo, the tests and fresh installs.
--
-- Faithful to what production databases have: `timestamp` WITHOUT time zone and default now(),
-- nullable ratings, `applied_rules` as a JSON array of {rule_id, rule_name} objects, and the
-- two summaries as plain views recomputed on every read.
--
-- One deliberate difference: uuid defaults use the built-in gen_random_uuid() (PostgreSQL 13+)
-- instead of uuid-ossp's uuid_generate_v4(), which produces the same kind of value but needs an
-- extension that not every server ships. upstream also created btree_gin, which no index here
-- uses; it is left out for the same reason.
--
-- Idempotent only on an empty database: run it once. It never touches pipectl's schema.

CREATE TABLE rule_performance (
    id SERIAL PRIMARY KEY,
    rule_id VARCHAR(50) NOT NULL,
    rule_name VARCHAR(100) NOT NULL,
    prompt_id UUID DEFAULT gen_random_uuid(),
    prompt_type VARCHAR(50),
    prompt_category VARCHAR(50),
    improvement_score FLOAT CHECK (improvement_score >= 0 AND improvement_score <= 1),
    confidence_level FLOAT CHECK (confidence_level >= 0 AND confidence_level <= 1),
    execution_time_ms INTEGER,
    rule_parameters JSONB,
    prompt_characteristics JSONB,
    before_metrics JSONB,
    after_metrics JSONB,
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW()
);

CREATE TABLE rule_combinations (
    id SERIAL PRIMARY KEY,
    combination_id UUID DEFAULT gen_random_uuid(),
    rule_set JSONB NOT NULL,
    prompt_type VARCHAR(50),
    combined_effectiveness FLOAT,
    individual_scores JSONB,
    sample_size INTEGER DEFAULT 1,
    statistical_confidence FLOAT,
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW()
);

CREATE TABLE user_feedback (
    id SERIAL PRIMARY KEY,
    feedback_id UUID DEFAULT gen_random_uuid(),
    original_prompt TEXT NOT NULL,
    improved_prompt TEXT NOT NULL,
    user_rating INTEGER CHECK (user_rating BETWEEN 1 AND 5),
    applied_rules JSONB NOT NULL,
    user_context JSONB,
    improvement_areas JSONB,
    user_notes TEXT,
    session_id VARCHAR(100),
    created_at TIMESTAMP DEFAULT NOW()
);

CREATE TABLE improvement_sessions (
    id SERIAL PRIMARY KEY,
    session_id VARCHAR(100) UNIQUE NOT NULL,
    user_id VARCHAR(50),
    original_prompt TEXT NOT NULL,
    final_prompt TEXT,
    rules_applied JSONB,
    iteration_count INTEGER DEFAULT 1,
    total_improvement_score FLOAT,
    session_metadata JSONB,
    started_at TIMESTAMP DEFAULT NOW(),
    completed_at TIMESTAMP,
    status VARCHAR(20) DEFAULT 'active' CHECK (status IN ('active', 'completed', 'abandoned'))
);

CREATE TABLE ml_model_performance (
    id SERIAL PRIMARY KEY,
    model_version VARCHAR(50) NOT NULL,
    model_type VARCHAR(50) NOT NULL,
    accuracy_score FLOAT,
    precision_score FLOAT,
    recall_score FLOAT,
    f1_score FLOAT,
    training_data_size INTEGER,
    validation_data_size INTEGER,
    hyperparameters JSONB,
    feature_importance JSONB,
    model_artifacts_path TEXT,
    mlflow_run_id VARCHAR(100),
    created_at TIMESTAMP DEFAULT NOW()
);

CREATE TABLE discovered_patterns (
    id SERIAL PRIMARY KEY,
    pattern_id UUID DEFAULT gen_random_uuid(),
    pattern_name VARCHAR(100),
    pattern_description TEXT,
    pattern_rule JSONB NOT NULL,
    discovery_method VARCHAR(50),
    effectiveness_score FLOAT,
    support_count INTEGER,
    confidence_interval JSONB,
    validation_status VARCHAR(20) DEFAULT 'pending'
        CHECK (validation_status IN ('pending', 'validated', 'rejected')),
    discovered_at TIMESTAMP DEFAULT NOW(),
    validated_at TIMESTAMP
);

CREATE TABLE rule_metadata (
    id SERIAL PRIMARY KEY,
    rule_id VARCHAR(50) UNIQUE NOT NULL,
    rule_name VARCHAR(100) NOT NULL,
    rule_category VARCHAR(50),
    rule_description TEXT,
    default_parameters JSONB,
    parameter_constraints JSONB,
    enabled BOOLEAN DEFAULT true,
    priority INTEGER DEFAULT 100,
    rule_version VARCHAR(20) DEFAULT '1.0.0',
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW()
);

CREATE TABLE ab_experiments (
    id SERIAL PRIMARY KEY,
    experiment_id UUID DEFAULT gen_random_uuid(),
    experiment_name VARCHAR(100) NOT NULL,
    description TEXT,
    control_rules JSONB NOT NULL,
    treatment_rules JSONB NOT NULL,
    target_metric VARCHAR(50),
    sample_size_per_group INTEGER,
    current_sample_size INTEGER DEFAULT 0,
    significance_threshold FLOAT DEFAULT 0.05,
    status VARCHAR(20) DEFAULT 'running'
        CHECK (status IN ('planning', 'running', 'completed', 'stopped')),
    results JSONB,
    started_at TIMESTAMP DEFAULT NOW(),
    completed_at TIMESTAMP
);

-- The MCP server's per-request record: the one place that says which cache level answered.
CREATE TABLE prompt_improvement_sessions (
    id SERIAL PRIMARY KEY,
    original_prompt TEXT NOT NULL,
    enhanced_prompt TEXT NOT NULL,
    applied_rules JSONB NOT NULL,
    response_time_ms INTEGER NOT NULL,
    cache_hit_level VARCHAR(10),
    agent_type VARCHAR(50),
    session_timestamp TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    anonymized_user_hash VARCHAR(64),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL PRIMARY KEY
);

CREATE INDEX idx_rule_performance_rule_id ON rule_performance(rule_id);
CREATE INDEX idx_rule_performance_prompt_type ON rule_performance(prompt_type);
CREATE INDEX idx_rule_performance_created_at ON rule_performance(created_at);
CREATE INDEX idx_rule_performance_improvement_score ON rule_performance(improvement_score);
CREATE INDEX idx_rule_performance_characteristics ON rule_performance USING GIN (prompt_characteristics);
CREATE INDEX idx_user_feedback_session_id ON user_feedback(session_id);
CREATE INDEX idx_user_feedback_rating ON user_feedback(user_rating);
CREATE INDEX idx_user_feedback_created_at ON user_feedback(created_at);
CREATE INDEX idx_user_feedback_applied_rules ON user_feedback USING GIN (applied_rules);
CREATE INDEX idx_ml_model_performance_version ON ml_model_performance(model_version);
CREATE INDEX idx_ml_model_performance_type ON ml_model_performance(model_type);
CREATE INDEX idx_discovered_patterns_effectiveness ON discovered_patterns(effectiveness_score);
CREATE INDEX idx_discovered_patterns_status ON discovered_patterns(validation_status);
CREATE INDEX idx_improvement_sessions_user_id ON improvement_sessions(user_id);
CREATE INDEX idx_improvement_sessions_status ON improvement_sessions(status);
CREATE INDEX idx_improvement_sessions_started_at ON improvement_sessions(started_at);
CREATE INDEX idx_sessions_timestamp ON prompt_improvement_sessions(session_timestamp);
CREATE INDEX idx_sessions_rules ON prompt_improvement_sessions USING GIN (applied_rules);

-- The summaries as upstream defines them: plain views, nothing to refresh.
CREATE VIEW rule_effectiveness_summary AS
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
FROM rule_performance
WHERE created_at >= NOW() - INTERVAL '30 days'
GROUP BY rule_id, rule_name
ORDER BY avg_improvement DESC;

-- Upstream reads applied_rules->>'rule_id' on an ARRAY, which yields NULL: rules_used is
-- usually {NULL}. Kept as deployed; pipectl's json_keys quality check reports it.
CREATE VIEW user_satisfaction_summary AS
SELECT
    DATE_TRUNC('day', created_at) AS feedback_date,
    COUNT(*) AS total_feedback,
    AVG(user_rating::FLOAT) AS avg_rating,
    COUNT(CASE WHEN user_rating >= 4 THEN 1 END) AS positive_feedback,
    COUNT(CASE WHEN user_rating <= 2 THEN 1 END) AS negative_feedback,
    ARRAY_AGG(DISTINCT (applied_rules->>'rule_id')) AS rules_used
FROM user_feedback
WHERE created_at >= NOW() - INTERVAL '90 days'
GROUP BY DATE_TRUNC('day', created_at)
ORDER BY feedback_date DESC;

CREATE OR REPLACE FUNCTION update_updated_at_column()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER update_rule_performance_updated_at BEFORE UPDATE ON rule_performance
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
CREATE TRIGGER update_rule_combinations_updated_at BEFORE UPDATE ON rule_combinations
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
CREATE TRIGGER update_rule_metadata_updated_at BEFORE UPDATE ON rule_metadata
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

INSERT INTO rule_metadata (rule_id, rule_name, rule_category, rule_description, default_parameters, priority) VALUES
('clarity_rule', 'Clarity Enhancement Rule', 'core', 'Improves prompt clarity and reduces ambiguity', '{"min_improvement_threshold": 0.1}', 100),
('specificity_rule', 'Specificity Enhancement Rule', 'core', 'Makes prompts more specific and actionable', '{"context_expansion": true}', 90),
('structure_rule', 'Structure Enhancement Rule', 'formatting', 'Improves prompt structure and organization', '{"add_formatting": true}', 80),
('context_rule', 'Context Enhancement Rule', 'content', 'Adds relevant context and background information', '{"context_depth": "medium"}', 70);
