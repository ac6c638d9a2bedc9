-- Undo 0011.idle-wakeups: every insert of runnable jobs notifies again (0001's trigger function).
CREATE OR REPLACE FUNCTION pgqueue.jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgqueue_jobs', q.queue)
    FROM (SELECT DISTINCT queue FROM new_jobs WHERE run_at <= now() AND status = 'queued') AS q;
    RETURN NULL;
END;
$$;

ALTER TABLE pgqueue.workers DROP COLUMN idle;
