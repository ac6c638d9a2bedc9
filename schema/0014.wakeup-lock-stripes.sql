-- Wake-up locks in 16 stripes per queue (README, "Wake-ups"). 0011's insert trigger took one
-- shared advisory lock per queue: every concurrent enqueue into a queue queued on the same lock
-- (one lock-manager partition, taken exclusively to count each shared holder), which is where
-- concurrent single enqueues fell between 8 and 32 producers. Now an insert takes one stripe,
-- chosen by its backend, and a worker marks itself idle only holding all 16 stripes of each of
-- its queues exclusively (pgqueue/sql/queries.sql, mark_worker_idle): the same guarantee (no
-- insert whose trigger ran before the mark is still uncommitted), with 1/16 of the contention.
-- depends: 0013.claim-function

CREATE OR REPLACE FUNCTION pgqueue.wakeup_stripe(queue text, stripe integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN hashtext(queue || ':' || stripe);

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
