-- Back to 0011's single wake-up lock per queue.

CREATE OR REPLACE FUNCTION pgqueue.jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    woken text;
BEGIN
    FOR woken IN SELECT DISTINCT queue FROM new_jobs WHERE run_at <= now() AND status = 'queued' LOOP
        -- 1885827447: pgqueue's class of two-key advisory locks for wake-ups (0x70677177)
        PERFORM pg_advisory_xact_lock_shared(1885827447, hashtext(woken));
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
DROP FUNCTION pgqueue.wakeup_stripe(text, integer);
