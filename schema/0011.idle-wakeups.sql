-- Wake-ups that cost nothing when nobody waits (README, "Wake-ups"). pg_notify takes a
-- database-wide lock at every commit that notified, which halved concurrent single enqueues;
-- only a worker with free slots waiting for work needs one, so only then is one sent.
-- workers.idle: the worker has free slots and waits for a NOTIFY (set by mark_worker_idle,
--   cleared by mark_worker_busy once its slots are all taken).
-- The race between a worker going idle and a job arriving is closed with an advisory lock
-- per queue: the insert trigger holds it shared until its transaction ends, and a worker
-- marks itself idle only while holding it exclusively (pg_try_advisory_xact_lock), so every
-- insert either sees the mark or committed before it, and the worker's check for runnable
-- jobs right after marking sees those.
-- depends: 0006.worker-status

ALTER TABLE pgqueue.workers ADD COLUMN idle boolean NOT NULL DEFAULT false;

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
