-- Job dependencies (README, "Job dependencies"): a child waits in status 'waiting' until every
-- parent has succeeded, then becomes 'queued' in the transaction that finished its last parent;
-- a parent that ends dead or cancelled cancels its waiting dependents, transitively, unless the
-- edge says run_if_failed.
-- depends: 0006.worker-status

ALTER TABLE pgqueue.jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE pgqueue.jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('waiting', 'queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled'));

-- Whether jobs were ever enqueued depending on this one: a finishing job without any skips the
-- dependents lookup (set while the enqueue holds the row's lock: release_dependents).
ALTER TABLE pgqueue.jobs ADD COLUMN has_dependents boolean NOT NULL DEFAULT false;

-- A waiting job holds its unique key like any other live job.
DROP INDEX pgqueue.jobs_unique_key_idx;
CREATE UNIQUE INDEX jobs_unique_key_idx ON pgqueue.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('waiting', 'queued', 'running', 'failed');

-- One row per edge. depends_on < job_id: a job can only depend on an older job (one that existed,
-- or came earlier in the same batch, when its id was drawn), so no cycle can ever be written,
-- not even from psql. The primary key serves "the parents of a job", the second index "the
-- dependents of a job" (what a finishing parent looks up).
CREATE TABLE pgqueue.job_dependencies (
    job_id        bigint  NOT NULL REFERENCES pgqueue.jobs (id) ON DELETE CASCADE,
    depends_on    bigint  NOT NULL REFERENCES pgqueue.jobs (id) ON DELETE CASCADE,
    run_if_failed boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job_id, depends_on),
    CONSTRAINT job_dependencies_older_parent CHECK (depends_on < job_id)
);
CREATE INDEX job_dependencies_parent_idx ON pgqueue.job_dependencies (depends_on, job_id);

-- 'unblocked': a waiting job became runnable. Added to whatever list the event CHECK holds now
-- (other migrations extend it too), so the order in which they are applied does not matter.
DO $$
DECLARE
    types text[];
BEGIN
    SELECT array_agg(DISTINCT m[1] ORDER BY m[1]) INTO types
    FROM pg_constraint c, regexp_matches(pg_get_constraintdef(c.oid), '''([a-z_]+)''', 'g') AS m
    WHERE c.conrelid = 'pgqueue.events'::regclass AND c.conname = 'events_type_check';
    ALTER TABLE pgqueue.events DROP CONSTRAINT events_type_check;
    EXECUTE format('ALTER TABLE pgqueue.events ADD CONSTRAINT events_type_check CHECK (type IN (%s))',
                   (SELECT string_agg(quote_literal(t), ', ') FROM unnest(array_append(array_remove(types, 'unblocked'), 'unblocked')) AS t));
END;
$$;

-- Settle waiting jobs whose parents may have finished: lock them in id order (concurrent
-- completions of several parents of one job queue up here), then decide on a fresh snapshot.
-- VOLATILE plpgsql: in READ COMMITTED each statement below sees what committed before it
-- started, so a completion that waited for these locks sees the other parents' outcomes, and a
-- parent's completion that waited for an enqueuer's FOR SHARE lock sees the dependents it added.
-- Cancelled jobs are finished parents in turn: the loop walks down the graph, a level at a time.
CREATE FUNCTION pgqueue.resolve_waiting(children bigint[]) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cancelled_ids bigint[];
    settled integer := 0;
    n integer;
    woken integer;
BEGIN
    WHILE cardinality(children) > 0 LOOP
        PERFORM 1 FROM pgqueue.jobs WHERE id = ANY(children) AND status = 'waiting' ORDER BY id FOR NO KEY UPDATE;
        WITH verdicts AS MATERIALIZED (
            SELECT c.id,
                   (SELECT p.id FROM pgqueue.job_dependencies d JOIN pgqueue.jobs p ON p.id = d.depends_on
                    WHERE d.job_id = c.id AND p.status IN ('dead', 'cancelled') AND NOT d.run_if_failed
                    ORDER BY p.id LIMIT 1) AS failed_parent,
                   NOT EXISTS (SELECT 1 FROM pgqueue.job_dependencies d JOIN pgqueue.jobs p ON p.id = d.depends_on
                               WHERE d.job_id = c.id AND p.status NOT IN ('succeeded', 'dead', 'cancelled'))
                       AS parents_finished
            FROM pgqueue.jobs c WHERE c.id = ANY(children) AND c.status = 'waiting'
        ), doomed AS (
            SELECT v.id, p.id AS parent_id, p.status AS parent_status
            FROM verdicts v JOIN pgqueue.jobs p ON p.id = v.failed_parent
        ), cancelled AS (
            UPDATE pgqueue.jobs AS j
            SET status = 'cancelled', finished_at = now(), updated_at = now(),
                last_error = 'cancelled: parent job ' || d.parent_id || ' ended ' || d.parent_status
            FROM doomed d WHERE j.id = d.id
            RETURNING j.id, d.parent_id, d.parent_status
        ), unblocked AS (
            UPDATE pgqueue.jobs AS j
            SET status = 'queued', run_at = greatest(j.run_at, now()), updated_at = now()
            FROM verdicts v WHERE j.id = v.id AND v.failed_parent IS NULL AND v.parents_finished
            RETURNING j.id, j.queue, j.run_at
        ), events AS (
            INSERT INTO pgqueue.events (job_id, type, data)
            SELECT id, 'cancelled', jsonb_build_object('reason', 'parent ' || parent_status, 'parent_id', parent_id)
            FROM cancelled
            UNION ALL
            SELECT id, 'unblocked', '{}' FROM unblocked
        ), wake AS (
            SELECT pg_notify('pgqueue_jobs', q.queue)
            FROM (SELECT DISTINCT queue FROM unblocked WHERE run_at <= now()) AS q
        )
        SELECT ARRAY(SELECT id FROM cancelled ORDER BY id), (SELECT count(*) FROM unblocked),
               (SELECT count(*) FROM wake)
        INTO cancelled_ids, n, woken;
        settled := settled + n + cardinality(cancelled_ids);
        children := ARRAY(SELECT DISTINCT job_id FROM pgqueue.job_dependencies
                          WHERE depends_on = ANY(cancelled_ids) ORDER BY job_id);
    END LOOP;
    RETURN settled;
END;
$$;

-- Called by every statement that finishes jobs (succeeded, dead, cancelled) with their ids: the
-- dependents are looked up here, on a fresh snapshot, not by the calling statement.
CREATE FUNCTION pgqueue.release_dependents(parents bigint[]) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF parents IS NULL OR cardinality(parents) = 0 THEN
        RETURN 0;
    END IF;
    RETURN pgqueue.resolve_waiting(ARRAY(SELECT DISTINCT job_id FROM pgqueue.job_dependencies
                                         WHERE depends_on = ANY(parents) ORDER BY job_id));
END;
$$;

-- Waiting jobs and what they wait for, for an operator with psql.
CREATE VIEW pgqueue.waiting_jobs AS
    SELECT j.id, j.queue, j.kind, j.created_at, now() - j.created_at AS waiting_for,
           array_agg(d.depends_on ORDER BY d.depends_on) FILTER (WHERE p.status <> 'succeeded') AS pending_parents,
           count(*) AS parents
    FROM pgqueue.jobs j
    JOIN pgqueue.job_dependencies d ON d.job_id = j.id
    JOIN pgqueue.jobs p ON p.id = d.depends_on
    WHERE j.status = 'waiting'
    GROUP BY j.id ORDER BY j.id;
