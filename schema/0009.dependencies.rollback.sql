-- Undo 0009.dependencies. Waiting jobs (there is nothing left for them to wait on) are cancelled
-- first, and 'unblocked' events removed, so the old CHECKs hold again.
DROP VIEW pgqueue.waiting_jobs;
DROP FUNCTION pgqueue.release_dependents(bigint[]);
DROP FUNCTION pgqueue.resolve_waiting(bigint[]);
DROP TABLE pgqueue.job_dependencies;
UPDATE pgqueue.jobs SET status = 'cancelled', finished_at = now(), updated_at = now(),
       last_error = 'cancelled: job dependencies were rolled back'
WHERE status = 'waiting';
DELETE FROM pgqueue.events WHERE type = 'unblocked';
DO $$
DECLARE
    types text[];
BEGIN
    SELECT array_agg(DISTINCT m[1] ORDER BY m[1]) INTO types
    FROM pg_constraint c, regexp_matches(pg_get_constraintdef(c.oid), '''([a-z_]+)''', 'g') AS m
    WHERE c.conrelid = 'pgqueue.events'::regclass AND c.conname = 'events_type_check';
    ALTER TABLE pgqueue.events DROP CONSTRAINT events_type_check;
    EXECUTE format('ALTER TABLE pgqueue.events ADD CONSTRAINT events_type_check CHECK (type IN (%s))',
                   (SELECT string_agg(quote_literal(t), ', ') FROM unnest(array_remove(types, 'unblocked')) AS t));
END;
$$;
DROP INDEX pgqueue.jobs_unique_key_idx;
CREATE UNIQUE INDEX jobs_unique_key_idx ON pgqueue.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('queued', 'running', 'failed');
ALTER TABLE pgqueue.jobs DROP COLUMN has_dependents;
ALTER TABLE pgqueue.jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE pgqueue.jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled'));
