-- Back to 0014's statement trigger and workers.idle.

DROP VIEW pgqueue.wakeup_listeners;
ALTER TABLE pgqueue.workers ADD COLUMN idle boolean NOT NULL DEFAULT false;
DROP TRIGGER jobs_inserted_notify ON pgqueue.jobs;
DROP FUNCTION pgqueue.wakeup_needed(text, text, timestamptz);

CREATE OR REPLACE FUNCTION pgqueue.jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    woken text;
BEGIN
    FOR woken IN SELECT DISTINCT queue FROM new_jobs WHERE run_at <= now() AND status = 'queued' LOOP
        -- 1885827447: pgqueue's class of two-key advisory locks for wake-ups (0x70677177)
        PERFORM pg_advisory_xact_lock_shared(1885827447, pgqueue.wakeup_stripe(woken, pg_backend_pid() % 16));
        -- a new statement, so a fresh snapshot: it sees a mark committed while we waited above
        IF EXISTS (SELECT 1 FROM pgqueue.workers AS w
                   WHERE w.idle AND woken = ANY (w.queues)
                     AND w.heartbeat_at > now() - make_interval(secs => 3 * w.heartbeat_seconds)) THEN
            PERFORM pg_notify('pgqueue_jobs', woken);
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_inserted_notify AFTER INSERT ON pgqueue.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.jobs_inserted();
