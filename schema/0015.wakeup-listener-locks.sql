-- Wake-ups priced at a lock, not a query (README, "Wake-ups"). 0011-0014's statement trigger
-- read its transition table and pgqueue.workers with two queries per INSERT; at 8 producers and
-- more they cost a single enqueue about a quarter of its throughput. Now whether an insert needs
-- to notify is answered by two advisory-lock calls in the trigger's WHEN condition, and nobody
-- waiting costs an insert no query at all.
--
-- Two classes of two-key advisory locks, keyed by pgqueue.wakeup_stripe(queue, stripe) in 16
-- stripes per queue (an insert uses the stripe of its backend, pid % 16):
-- - 1885827449, "listening": a worker with free slots waiting for work holds every stripe of
--   each of its queues shared, as session locks on a connection of its own. An insert probes
--   its stripe with an exclusive try-lock, released at once: the probe fails exactly when some
--   worker listens, and only then is a NOTIFY sent. Many workers can listen at once (shared);
--   a worker that dies takes its locks with its connection.
-- - 1885827447, "barrier": an insert holds its stripe shared until its transaction ends, taken
--   before the probe. A worker that has just started listening waits until it can take every
--   stripe exclusively for a moment (try-locks, retried): then no insert that probed before it
--   listened is still uncommitted, and its look for runnable jobs right after sees those.
-- So every insert either notifies a listening worker or is seen by that look. The locks are
-- independent of snapshots (REPEATABLE READ inserts are covered too), and inserting needs no
-- session state: through PgBouncer's transaction pooling nothing is held across transactions.
-- The WHEN condition calls a plpgsql function on purpose: a WHEN expression is prepared again
-- for every INSERT statement, a plpgsql function's simple expressions once per session.
-- depends: 0014.wakeup-lock-stripes

CREATE FUNCTION pgqueue.wakeup_needed(queue text, status text, run_at timestamptz) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    stripe integer;
    noted text;
BEGIN
    IF status <> 'queued' OR run_at > now() THEN
        RETURN false;  -- nothing to run yet: a waiting worker's timer or the parents' completion wakes it
    END IF;
    IF current_setting('pgqueue.wakeup_checked', true) = queue THEN
        -- an earlier row of this transaction probed for this queue and holds the barrier until
        -- commit: it notified if needed, and a worker starting to listen since sees all our rows
        -- (a bulk COPY probes once, not per row; a rolled-back savepoint forgets the setting)
        RETURN false;
    END IF;
    -- pgqueue.wakeup_stripe(queue, pg_backend_pid() % 16), written out: a call of the SQL
    -- function here is planned again in every transaction, which cost more than the locks
    stripe := hashtext(queue || ':' || pg_backend_pid() % 16);
    IF NOT pg_try_advisory_xact_lock_shared(1885827447, stripe) THEN
        RETURN true;  -- a worker is starting to listen on this queue right now
    END IF;
    noted := set_config('pgqueue.wakeup_checked', queue, true);  -- an assignment, not a PERFORM query
    RETURN NOT (pg_try_advisory_lock(1885827449, stripe) AND pg_advisory_unlock(1885827449, stripe));
END;
$$;

DROP TRIGGER jobs_inserted_notify ON pgqueue.jobs;

CREATE OR REPLACE FUNCTION pgqueue.jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- once per transaction and queue: PostgreSQL folds identical notifications of a transaction
    PERFORM pg_notify('pgqueue_jobs', NEW.queue);
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_inserted_notify AFTER INSERT ON pgqueue.jobs
    FOR EACH ROW WHEN (pgqueue.wakeup_needed(NEW.queue, NEW.status, NEW.run_at))
    EXECUTE FUNCTION pgqueue.jobs_inserted();

-- the idle mark lives in the listening locks now
ALTER TABLE pgqueue.workers DROP COLUMN idle;

-- For inspection: how many worker sessions listen on each queue of a live worker right now.
CREATE VIEW pgqueue.wakeup_listeners AS
SELECT q.queue, count(l.pid) AS listeners
FROM (SELECT DISTINCT unnest(queues) AS queue FROM pgqueue.workers) AS q
LEFT JOIN pg_locks AS l
       ON l.locktype = 'advisory' AND l.classid = 1885827449 AND l.objsubid = 2 AND l.granted
      AND l.mode = 'ShareLock' AND l.objid = pgqueue.wakeup_stripe(q.queue, 0)::oid
GROUP BY q.queue;
