-- A request is one trace: whoever files it (the CLI, the console) stores its W3C trace
-- context here, and the agent that claims it makes the claim, the run(s), their attempts
-- and the outcome spans of that trace (https://www.w3.org/TR/trace-context/#traceparent-header).
-- Operators choose it (column grant in roles.sql), so its shape is checked here and the
-- agent parses it again: a malformed or all-zero value starts a trace of its own.
ALTER TABLE pipectl.requests
    ADD COLUMN traceparent text
        CHECK (traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');
COMMENT ON COLUMN pipectl.requests.traceparent IS
    'W3C traceparent of the span that filed the request; the agent continues that trace.';
