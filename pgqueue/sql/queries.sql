-- Every SQL statement of the engine, each under a `-- name: NAME :cardinality` header
-- (:one, :many, :none), with %(param)s placeholders. Loaded once by pgqueue/sql.py.
--
-- Statements that act on a batch of jobs find the rows by primary key, `j.id = ANY(...)`:
-- joined only to their input, the planner hashes the batch against a scan of the whole jobs
-- table once the batch is a fair share of it (see claim_jobs).

-- name: insert_jobs :many
-- Insert a batch in one statement; rows whose unique key is already held by a live job are
-- skipped (also a duplicate inside the batch), the caller then looks the holders up.
INSERT INTO pgqueue.jobs (queue, kind, payload, priority, run_at, max_attempts, unique_key, owner_id, concurrency_key)
SELECT t.queue, t.kind, t.payload, t.priority,
       coalesce(t.run_at, now() + make_interval(secs => t.delay)), t.max_attempts, t.unique_key, t.owner_id,
       t.concurrency_key
FROM unnest(%(queues)s::text[], %(kinds)s::text[], %(payloads)s::jsonb[], %(priorities)s::smallint[],
            %(run_ats)s::timestamptz[], %(delays)s::float8[], %(max_attempts)s::int[],
            %(unique_keys)s::text[], %(owner_ids)s::text[], %(concurrency_keys)s::text[])
     AS t(queue, kind, payload, priority, run_at, delay, max_attempts, unique_key, owner_id, concurrency_key)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('waiting', 'queued', 'running', 'failed')
DO NOTHING
RETURNING *;

-- name: insert_job :one
-- One job without a unique key (a web app's enqueue per request): plain parameters instead of
-- insert_jobs' arrays, and the row back as one JSON text that msgspec decodes in one call
-- (building 27 columns of a row result cost the client more than the insert).
INSERT INTO pgqueue.jobs AS j (queue, kind, payload, priority, run_at, max_attempts, owner_id, concurrency_key)
VALUES (%(queue)s, %(kind)s, %(payload)s::jsonb, %(priority)s,
        coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay)s::float8)),
        %(max_attempts)s, %(owner_id)s, %(concurrency_key)s)
RETURNING row_to_json(j)::text;

-- name: insert_shared_jobs :one
-- The jobs of concurrent enqueues that share one statement (pgqueue/queue.py, SharedInserts),
-- none with a unique key: one JSON array in, the rows back as one JSON array in input order
-- (ids are drawn in scan order), one encode and one decode call for the client.
WITH inserted AS (
    INSERT INTO pgqueue.jobs AS j (queue, kind, payload, priority, run_at, max_attempts, owner_id, concurrency_key)
    SELECT t.queue, t.kind, t.payload, t.priority, coalesce(t.run_at, now() + make_interval(secs => t.delay)),
           t.max_attempts, t.owner_id, t.concurrency_key
    FROM jsonb_to_recordset(%(jobs)s::jsonb) AS t(queue text, kind text, payload jsonb, priority smallint,
                                                  run_at timestamptz, delay float8, max_attempts integer,
                                                  owner_id text, concurrency_key text)
    RETURNING j.*
)
SELECT json_agg(inserted ORDER BY id)::text FROM inserted;

-- name: reserve_job_ids :one
-- Ids for a COPY batch, taken from the identity sequence in one round trip, as one array
-- (naming the sequence directly: pg_get_serial_sequence() per row made this 8x slower).
SELECT array_agg(nextval('pgqueue.jobs_id_seq')) FROM generate_series(1, %(count)s);

-- name: copy_jobs :copy
-- Bulk enqueue of jobs runnable now, without unique keys: COPY is the fastest way in.
COPY pgqueue.jobs (id, queue, kind, payload, priority, max_attempts, owner_id, concurrency_key) FROM STDIN;

-- name: live_jobs_by_unique_key :many
-- The live holders of unique keys (after insert_jobs skipped duplicates).
SELECT * FROM pgqueue.jobs
WHERE unique_key = ANY(%(unique_keys)s) AND status IN ('waiting', 'queued', 'running', 'failed');

-- name: claim_jobs :one
-- Claim up to %(limit)s runnable jobs for one worker: pgqueue.claim (schema/0013) does it all
-- (paused queues, limits, crash suspects), here through pgqueue.claim_runnable (schema/0016),
-- which keeps its statements' generic plans, and returns the jobs as one JSON array (NULL when
-- none): decoding that in one call costs the worker a third of what building the rows column
-- by column does. %(async_commit)s: this statement is its own transaction (never the caller's),
-- so its commit need not wait for the WAL flush (a claim lost in a server crash puts the job
-- back in the queue, which at-least-once delivery covers anyway).
SELECT pgqueue.claim_runnable(%(queues)s::text[], %(limit)s, %(worker_id)s, %(lease_seconds)s, %(charged)s,
                              %(include_suspects)s, %(record_started)s) AS jobs,
       CASE WHEN %(async_commit)s THEN set_config('synchronous_commit', 'off', true) END AS commit_mode;

-- name: claim_suspect_job :one
-- Claim one crash suspect (see rescue_expired_leases) for a worker that has nothing else
-- running and will run nothing else beside it: if it crashes its worker again, it alone is
-- charged (lease_charged). Paused queues and limits apply as in claim_jobs.
SELECT pgqueue.claim(%(queues)s::text[], 1, %(worker_id)s, %(lease_seconds)s, true, true, true, false) AS jobs;

-- name: suspects_waiting :one
-- Whether a crash suspect of these queues is runnable (the worker then stops claiming, lets
-- its running jobs finish, and runs the suspect alone). Probes the small jobs_suspect_idx.
SELECT EXISTS (
    SELECT 1 FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT 1 FROM pgqueue.jobs
        WHERE queue = q.name AND crash_suspect AND status IN ('queued', 'failed') AND run_at <= now()
        LIMIT 1
    ) AS s
    WHERE NOT EXISTS (SELECT 1 FROM pgqueue.queues AS p WHERE p.name = q.name AND p.paused)  -- not claimable
) AS waiting;

-- name: complete_jobs :many
-- Finish a batch of jobs as succeeded; only rows whose lease token still matches are touched,
-- so a worker whose job was rescued cannot overwrite it. Returns the ids it finished.
-- The lease statements match on (id, lease_token) only, never on status: a token exists only
-- while a job runs (CHECK jobs_lease_only_while_running), and a status condition lets the
-- generic plan of a prepared statement pick jobs_lease_idx and rescan the input per running
-- job (seconds instead of milliseconds for a batch of 1,000).
-- The batch comes as one JSON array of {id, token, result}: one encode call for the worker
-- instead of three arrays dumped element by element. `j.id = ANY(...)` makes the rows found by
-- primary key (see claim_jobs: a join alone may scan the whole table).
-- The rows are locked first, in id order (like every statement that locks many jobs and may
-- wait), so two such statements can never deadlock.
-- Every statement that finishes jobs ends with pgqueue.release_dependents (schema/0009): their
-- waiting dependents become runnable (or are cancelled) in the same transaction. It is called
-- only for jobs flagged has_dependents (set by the enqueue of a dependent, which locked the row
-- first: the UPDATE below sees the flag on the latest row version), so a batch of jobs without
-- dependents pays nothing for it.
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(items)s::jsonb) AS t(id bigint, token uuid, result jsonb)
), locked AS MATERIALIZED (
    SELECT id FROM pgqueue.jobs WHERE id = ANY(ARRAY(SELECT id FROM input)) ORDER BY id FOR NO KEY UPDATE
), done AS (
    UPDATE pgqueue.jobs AS j
    SET status = 'succeeded', result = i.result, finished_at = now(), updated_at = now(),
        lease_token = NULL, lease_expires_at = NULL
    FROM input AS i WHERE j.id = ANY(ARRAY(SELECT id FROM locked)) AND j.id = i.id AND j.lease_token = i.token
    RETURNING j.id, j.attempts, j.has_dependents
), events AS (
    INSERT INTO pgqueue.events (job_id, type, data)
    SELECT id, 'succeeded', jsonb_build_object('attempt', attempts) FROM done ORDER BY id
)
SELECT id FROM done
WHERE (SELECT count(pgqueue.release_dependents(p.ids))  -- an InitPlan: called once, after done
       FROM (SELECT ARRAY(SELECT id FROM done WHERE has_dependents) AS ids) AS p WHERE cardinality(p.ids) > 0) >= 0;

-- name: fail_job :one
-- Record a failed attempt: back to 'failed' with a retry time, or 'dead' once attempts are
-- used up (or when %(permanent)s), or 'cancelled' when cancellation was requested meanwhile
-- (a retry would only be cancelled again). Only the current lease holder may do this.
WITH failed AS (
    UPDATE pgqueue.jobs AS j
    SET status = CASE WHEN j.cancel_requested THEN 'cancelled'
                      WHEN %(permanent)s OR j.attempts >= j.max_attempts THEN 'dead' ELSE 'failed' END,
        run_at = CASE WHEN j.cancel_requested OR %(permanent)s OR j.attempts >= j.max_attempts THEN j.run_at
                      ELSE now() + make_interval(secs => %(retry_delay)s) END,
        finished_at = CASE WHEN j.cancel_requested OR %(permanent)s OR j.attempts >= j.max_attempts THEN now() END,
        last_error = %(error)s, lease_token = NULL, lease_expires_at = NULL, updated_at = now(),
        crash_suspect = false  -- it failed without crashing its worker: an ordinary retry
    WHERE j.id = %(id)s AND j.lease_token = %(token)s AND j.status = 'running'
    RETURNING j.*
), errors AS (
    INSERT INTO pgqueue.job_errors (job_id, attempt, worker_id, error)
    SELECT id, attempts, lease_owner, %(error)s FROM failed
), events AS (
    INSERT INTO pgqueue.events (job_id, type, data)
    SELECT id, status,
           jsonb_build_object('attempt', attempts, 'error', left(%(error)s, 500),
                              'retry_at', CASE status WHEN 'failed' THEN run_at END)
    FROM failed
)
SELECT failed.* FROM failed
WHERE (SELECT count(pgqueue.release_dependents(p.ids))  -- an InitPlan: called once, after failed
       FROM (SELECT ARRAY(SELECT id FROM failed WHERE has_dependents AND status <> 'failed') AS ids) AS p WHERE cardinality(p.ids) > 0) >= 0;

-- name: finish_cancelled_job :one
-- A running job whose handler stopped because cancellation was requested.
WITH cancelled AS (
    UPDATE pgqueue.jobs AS j
    SET status = 'cancelled', finished_at = now(), updated_at = now(), lease_token = NULL, lease_expires_at = NULL,
        last_error = 'cancelled while running'
    WHERE j.id = %(id)s AND j.lease_token = %(token)s AND j.status = 'running'
    RETURNING j.*
), events AS (
    INSERT INTO pgqueue.events (job_id, type, data) SELECT id, 'cancelled', '{"while_running": true}' FROM cancelled
)
SELECT cancelled.* FROM cancelled
WHERE (SELECT count(pgqueue.release_dependents(p.ids))  -- an InitPlan: called once, after cancelled
       FROM (SELECT ARRAY(SELECT id FROM cancelled WHERE has_dependents) AS ids) AS p WHERE cardinality(p.ids) > 0) >= 0;

-- name: release_jobs :many
-- Give jobs back to the queue untouched (graceful shutdown ran out of time): the attempt
-- did not fail, so it is not counted. A job whose cancellation was requested is cancelled.
-- It takes jobs away from their handlers, so it locks them FOR UPDATE (in id order): that waits
-- for a handler's ctx.transaction() (FOR KEY SHARE, see lease_held) to end first.
WITH locked AS MATERIALIZED (
    SELECT id FROM pgqueue.jobs WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id FOR UPDATE
), released AS (
    UPDATE pgqueue.jobs AS j
    SET status = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'queued' END,
        attempts = CASE WHEN j.cancel_requested THEN j.attempts ELSE greatest(j.attempts - 1, 0) END,
        finished_at = CASE WHEN j.cancel_requested THEN now() END,
        run_at = now(), updated_at = now(), lease_token = NULL, lease_expires_at = NULL
    FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS i(id, token)
    WHERE j.id = ANY(ARRAY(SELECT id FROM locked)) AND j.id = i.id AND j.lease_token = i.token
    RETURNING j.id, j.status, j.has_dependents
), events AS (
    INSERT INTO pgqueue.events (job_id, type, data)
    SELECT id, CASE status WHEN 'cancelled' THEN 'cancelled' ELSE 'released' END, '{}' FROM released
)
SELECT id FROM released
WHERE (SELECT count(pgqueue.release_dependents(p.ids))  -- an InitPlan: called once, after released
       FROM (SELECT ARRAY(SELECT id FROM released WHERE has_dependents AND status = 'cancelled') AS ids) AS p WHERE cardinality(p.ids) > 0) >= 0;

-- name: extend_leases :many
-- Heartbeat: push the lease of each job this worker holds. Returns one row per lease still held
-- (a missing one was lost): its token, whether cancellation was requested, and whether it was
-- extended. It never waits for a lock: a row locked by someone else's UPDATE or FOR UPDATE is
-- skipped (held, not extended: the next beat tries again); a handler's ctx.transaction() holds
-- only FOR KEY SHARE (lease_held), which does not conflict with this UPDATE's FOR NO KEY UPDATE.
-- The expiry counts from clock_timestamp(), when the row is written, not from the statement's start.
WITH held AS (
    SELECT j.id, j.lease_token, j.cancel_requested
    FROM pgqueue.jobs AS j JOIN unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS i(id, token)
         ON j.id = i.id AND j.lease_token = i.token
    WHERE j.id = ANY(%(ids)s::bigint[])
), locked AS MATERIALIZED (
    SELECT id FROM pgqueue.jobs WHERE id = ANY(ARRAY(SELECT id FROM held)) ORDER BY id
    FOR NO KEY UPDATE SKIP LOCKED
), extended AS (
    UPDATE pgqueue.jobs AS j
    SET lease_expires_at = clock_timestamp() + make_interval(secs => %(lease_seconds)s)
    FROM held AS h
    WHERE j.id = ANY(ARRAY(SELECT id FROM locked)) AND j.id = h.id AND j.lease_token = h.lease_token
    RETURNING j.id
)
SELECT h.id, h.lease_token, h.cancel_requested, e.id IS NOT NULL AS extended
FROM held AS h LEFT JOIN extended AS e ON e.id = h.id;

-- name: lease_held :one
-- Whether a lease is still the caller's; locks the job row until the caller's transaction ends,
-- so a checkpoint and the work it covers commit only while the lease is held. FOR KEY SHARE:
-- it conflicts only with FOR UPDATE, which whoever takes the job away takes (the rescuer, a
-- release), so they wait for (or skip) this transaction, while the heartbeat's UPDATE
-- (FOR NO KEY UPDATE) passes: a handler's transaction never holds up its worker's heartbeat.
SELECT cancel_requested FROM pgqueue.jobs
WHERE id = %(id)s AND lease_token = %(token)s AND status = 'running'
FOR KEY SHARE;

-- name: rescue_expired_leases :many
-- Jobs whose worker stopped heartbeating (killed, partitioned) become runnable at once, or
-- cancelled when that was asked for. A charged lease (lease_charged: the job ran alone, or an
-- HTTP worker claimed it) counts as a failed attempt and may end the job dead; an uncharged one
-- (a batch of pgqueue's worker: which job crashed it cannot be told) gives the attempt back and
-- marks the job a crash suspect, which the worker then runs alone (README, "One bad job").
-- Only while the server has been up for longer than a lease (%(lease_seconds)s): after an
-- outage, live workers first get the time to reconnect and re-assert their leases.
-- FOR UPDATE SKIP LOCKED: a job whose handler is inside ctx.transaction() (FOR KEY SHARE) is
-- skipped until that transaction ends, and the rescue never waits for anyone.
WITH expired AS MATERIALIZED (
    SELECT id FROM pgqueue.jobs
    WHERE status = 'running' AND lease_expires_at < now()
      AND pg_postmaster_start_time() < now() - make_interval(secs => %(lease_seconds)s)
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), rescued AS (
    UPDATE pgqueue.jobs AS j
    SET status = CASE WHEN j.cancel_requested THEN 'cancelled'
                      WHEN j.lease_charged AND j.attempts >= j.max_attempts THEN 'dead' ELSE 'failed' END,
        attempts = CASE WHEN j.lease_charged OR j.cancel_requested THEN j.attempts ELSE j.attempts - 1 END,
        crash_suspect = NOT j.cancel_requested,
        run_at = now(),
        finished_at = CASE WHEN j.cancel_requested OR (j.lease_charged AND j.attempts >= j.max_attempts)
                           THEN now() END,
        last_error = 'lease expired: worker ' || coalesce(j.lease_owner, '?') || ' stopped heartbeating'
                     || CASE WHEN j.lease_charged OR j.cancel_requested THEN ''
                             ELSE ' (attempt not counted: it ran beside other jobs; it runs alone next)' END,
        lease_token = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE j.id = ANY(ARRAY(SELECT id FROM expired))
    RETURNING j.*,
              j.attempts + CASE WHEN j.lease_charged OR j.cancel_requested THEN 0 ELSE 1 END AS run_attempt
), errors AS (
    INSERT INTO pgqueue.job_errors (job_id, attempt, worker_id, error)
    SELECT id, run_attempt, lease_owner, last_error FROM rescued
), events AS (
    INSERT INTO pgqueue.events (job_id, type, data)
    SELECT id, CASE status WHEN 'failed' THEN 'rescued' ELSE status END,
           jsonb_build_object('attempt', run_attempt, 'error', last_error, 'counted', lease_charged)
    FROM rescued
)
SELECT id, status, lease_owner FROM rescued
WHERE (SELECT count(pgqueue.release_dependents(p.ids))  -- an InitPlan: called once, after rescued
       FROM (SELECT ARRAY(SELECT id FROM rescued WHERE has_dependents AND status <> 'failed') AS ids) AS p WHERE cardinality(p.ids) > 0) >= 0;

-- name: prune_finished_jobs :many
-- Delete finished jobs past their retention, in bounded batches (errors and checkpoints cascade).
WITH doomed AS MATERIALIZED (
    SELECT id FROM pgqueue.jobs
    WHERE finished_at < now() - make_interval(secs => %(older_than_seconds)s)
      AND status = ANY(%(statuses)s)
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM pgqueue.jobs AS j WHERE j.id = ANY(ARRAY(SELECT id FROM doomed)) RETURNING j.id;

-- name: create_event_partitions :many
-- Events partitions from today (UTC) to days_ahead days ahead, and for any day with rows in the
-- default partition (moved out of it); the names of those created (schema/0012).
SELECT name FROM pgqueue.create_event_partitions(%(days_ahead)s) AS name;

-- name: drop_event_partitions :many
-- Retention: detach and drop whole events partitions older than older_than_seconds; their names.
SELECT name FROM pgqueue.drop_event_partitions(now() - make_interval(secs => %(older_than_seconds)s)) AS name;

-- name: event_partition_health :one
-- Rows in the default partition (0 unless maintenance fell behind) and how far ahead partitions reach.
SELECT (SELECT count(*) FROM pgqueue.events_default) AS default_rows,
       (SELECT max(range_to) FROM pgqueue.event_partitions) AS covered_until;

-- name: prune_workers :many
-- Forget workers silent for 10 of their own heartbeats, and at least older_than_seconds.
DELETE FROM pgqueue.workers
WHERE heartbeat_at < now() - make_interval(secs => greatest(10 * heartbeat_seconds, %(older_than_seconds)s))
RETURNING id;

-- name: prune_rate_buckets :many
-- Forget token buckets that are full again (refilled to capacity: the same as no row, which a
-- claim reads as a full bucket) and those of limits since removed. A claim updating a bucket
-- meanwhile wins or loses the row lock: either way the bucket it writes is right.
DELETE FROM pgqueue.rate_buckets AS b
WHERE pgqueue.refilled_tokens(b.tokens, b.refilled_at, now(), b.capacity, b.period) >= b.capacity
   OR NOT EXISTS (SELECT 1 FROM pgqueue.queues AS q WHERE q.name = b.queue
                  AND CASE WHEN b.key = '' THEN q.rate_limit IS NOT NULL ELSE q.key_rate_limit IS NOT NULL END)
RETURNING b.queue;

-- name: get_job :one
SELECT * FROM pgqueue.jobs WHERE id = %(id)s;

-- name: lock_job :one
-- The job row, locked for a state change decided in Python (cancel, retry).
SELECT * FROM pgqueue.jobs WHERE id = %(id)s FOR UPDATE;

-- name: cancel_queued_job :one
-- Cancel a job that is not running (queued, failed and waiting to retry, waiting on parents);
-- its waiting dependents are cancelled too.
WITH cancelled AS (
    UPDATE pgqueue.jobs SET status = 'cancelled', finished_at = now(), updated_at = now()
    WHERE id = %(id)s AND status IN ('waiting', 'queued', 'failed')
    RETURNING *
), events AS (
    INSERT INTO pgqueue.events (job_id, type, data) SELECT id, 'cancelled', '{}' FROM cancelled
)
SELECT cancelled.* FROM cancelled
WHERE (SELECT count(pgqueue.release_dependents(p.ids))  -- an InitPlan: called once, after cancelled
       FROM (SELECT ARRAY(SELECT id FROM cancelled WHERE has_dependents) AS ids) AS p WHERE cardinality(p.ids) > 0) >= 0;

-- name: request_cancel :one
-- Flag a running job; its worker sees the flag by NOTIFY (and on its next heartbeat).
WITH flagged AS (
    UPDATE pgqueue.jobs SET cancel_requested = true, updated_at = now()
    WHERE id = %(id)s AND status = 'running'
    RETURNING *
), events AS (
    INSERT INTO pgqueue.events (job_id, type, data) SELECT id, 'cancel_requested', '{}' FROM flagged
), wake AS (
    SELECT pg_notify('pgqueue_control', 'cancel ' || id) FROM flagged
)
SELECT flagged.* FROM flagged, (SELECT count(*) FROM wake) AS w;

-- name: redrive_job :one
-- Re-run a dead, failed (waiting) or cancelled job now with a fresh attempt budget; its error
-- history stays. Cancelled jobs may be retried as in River and Oban: cancel is a decision an
-- operator may take back.
WITH redriven AS (
    UPDATE pgqueue.jobs
    SET status = 'queued', attempts = 0, run_at = now(), finished_at = NULL, cancel_requested = false,
        crash_suspect = false, updated_at = now()
    WHERE id = %(id)s AND status IN ('dead', 'failed', 'cancelled')
    RETURNING *
), events AS (
    INSERT INTO pgqueue.events (job_id, type, data) SELECT id, 'retried', '{}' FROM redriven
), wake AS (
    SELECT pg_notify('pgqueue_jobs', queue) FROM redriven
)
SELECT redriven.* FROM redriven, (SELECT count(*) FROM wake) AS w;

-- name: run_job_now :one
-- A queued job scheduled for later becomes runnable now (the dashboard's "run now"); the
-- workers of its queue are woken.
WITH moved AS (
    UPDATE pgqueue.jobs SET run_at = now(), updated_at = now()
    WHERE id = %(id)s AND status = 'queued' AND run_at > now()
    RETURNING *
), wake AS (
    SELECT pg_notify('pgqueue_jobs', queue) FROM moved
)
SELECT moved.* FROM moved, (SELECT count(*) FROM wake) AS w;

-- name: delete_job :one
-- Remove a job that is not running (its errors and checkpoint go with it). A 'deleted' event
-- ends any stream still following the job.
WITH deleted AS (
    DELETE FROM pgqueue.jobs WHERE id = %(id)s AND status <> 'running' RETURNING id
), events AS (
    INSERT INTO pgqueue.events (job_id, type, data) SELECT id, 'deleted', '{}' FROM deleted
)
SELECT id FROM deleted;

-- name: job_errors :many
SELECT attempt, worker_id, error, failed_at FROM pgqueue.job_errors WHERE job_id = %(job_id)s ORDER BY id;

-- name: insert_event :one
-- An event written by a handler (progress, log) in its own short transaction.
INSERT INTO pgqueue.events (job_id, type, data) VALUES (%(job_id)s, %(type)s, %(data)s) RETURNING id;

-- name: insert_events :none
-- Several handler events at once (progress and log lines flushed together).
INSERT INTO pgqueue.events (job_id, type, data)
SELECT * FROM unnest(%(job_ids)s::bigint[], %(types)s::text[], %(datas)s::jsonb[]);

-- name: job_events :many
-- A job's events after an id (0 for all), oldest first: SSE replay and the job timeline.
SELECT id, job_id, type, data, created_at FROM pgqueue.events
WHERE job_id = %(job_id)s AND id > %(after_id)s ORDER BY id LIMIT %(limit)s;

-- name: events_after :many
-- Every event after an id, oldest first (the global stream's replay).
SELECT id, job_id, type, data, created_at FROM pgqueue.events
WHERE id > %(after_id)s ORDER BY id LIMIT %(limit)s;

-- name: events_by_ids :many
SELECT id, job_id, type, data, created_at FROM pgqueue.events WHERE id = ANY(%(ids)s) ORDER BY id;

-- name: owner_events_after :many
-- Events of one owner's jobs after an id, oldest first (a user's global stream replay).
SELECT e.id, e.job_id, e.type, e.data, e.created_at
FROM pgqueue.events e JOIN pgqueue.jobs j ON j.id = e.job_id
WHERE j.owner_id = %(owner_id)s AND e.id > %(after_id)s ORDER BY e.id LIMIT %(limit)s;

-- name: latest_event_id :one
-- The newest event id (0 when there is none): where a live-only stream starts.
SELECT coalesce(max(id), 0) AS id FROM pgqueue.events;

-- name: job_owners :many
-- The owner of each job (the SSE hub routes events to the users allowed to see them).
SELECT id, owner_id FROM pgqueue.jobs WHERE id = ANY(%(ids)s);

-- name: load_checkpoint :one
SELECT state FROM pgqueue.checkpoints WHERE job_id = %(job_id)s;

-- name: save_checkpoint :one
-- Only while the lease is the caller's: the job row locked as in lease_held, and the checkpoint
-- written, in one statement (a handler checkpointing every page pays one round trip, not two).
-- No row back: the lease was lost, and nothing was written.
WITH held AS (
    SELECT id FROM pgqueue.jobs
    WHERE id = %(job_id)s AND lease_token = %(token)s AND status = 'running'
    FOR KEY SHARE
)
INSERT INTO pgqueue.checkpoints (job_id, state) SELECT id, %(state)s FROM held
ON CONFLICT (job_id) DO UPDATE SET state = excluded.state, updated_at = now()
RETURNING job_id;

-- name: register_worker :none
-- heartbeat_seconds: how often this worker touches its row (pgqueue.worker_status's `alive`).
INSERT INTO pgqueue.workers (id, hostname, pid, queues, concurrency, heartbeat_seconds)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s, %(heartbeat_seconds)s)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), heartbeat_seconds = EXCLUDED.heartbeat_seconds;

-- name: listen_for_inserts :one
-- A worker with free slots is about to wait for a NOTIFY (schema/0015.wakeup-listener-locks.sql).
-- Only on the worker's own session connection, never a pooled one: the locks outlive the
-- statement. listening: every stripe of each queue is now held shared, so from now on inserts
-- into them notify (false: an insert was probing one right then; the caller lets go of all and
-- tries again shortly). settled: no insert that probed before is still uncommitted, so the
-- worker's look for runnable jobs right after sees those (false: it tries again shortly, still
-- listening).
WITH stripes AS MATERIALIZED (
    SELECT pgqueue.wakeup_stripe(q.name, s.stripe) AS key
    FROM unnest(%(queues)s::text[]) AS q(name) CROSS JOIN generate_series(0, 15) AS s(stripe)
), listening AS MATERIALIZED (
    SELECT bool_and(pg_try_advisory_lock_shared(1885827449, key)) AS ok FROM stripes
)
SELECT l.ok AS listening,
       l.ok AND (SELECT bool_and(pg_try_advisory_xact_lock(1885827447, key)) FROM stripes) AS settled
FROM listening AS l;

-- name: stop_listening_for_inserts :none
-- Every slot of the worker is taken (or it stops): inserts need not wake it. The connection
-- holds no other session lock.
SELECT pg_advisory_unlock_all();

-- name: unregister_worker :none
DELETE FROM pgqueue.workers WHERE id = %(id)s;

-- name: next_run_at :one
-- When the next scheduled job of these queues becomes runnable (lets an idle worker sleep until then).
-- One LIMIT 1 probe of jobs_claim_idx per queue and priority (1-5, the CHECK's range): a plain
-- min(run_at) reads every waiting job, and idle workers ask this on every poll.
-- Paused queues are left out: their jobs are not runnable (a worker would poll them in a loop).
SELECT (SELECT min(m.run_at)
        FROM unnest(%(queues)s::text[]) AS q(name)
        CROSS JOIN generate_series(1, 5) AS p(priority)
        CROSS JOIN LATERAL (
            SELECT run_at FROM pgqueue.jobs
            WHERE queue = q.name AND priority = p.priority AND status IN ('queued', 'failed')
            ORDER BY run_at
            LIMIT 1
        ) AS m
        WHERE NOT EXISTS (SELECT 1 FROM pgqueue.queues AS s WHERE s.name = q.name AND s.paused)) AS run_at,
       now() AS now;

-- name: queue_stats :many
-- Depth per queue and status (the `stats` command).
SELECT queue, status, count(*) AS jobs FROM pgqueue.jobs GROUP BY queue, status ORDER BY queue, status;

-- name: try_leader_lock :one
-- Maintenance runs on one worker: whoever holds this session advisory lock.
SELECT pg_try_advisory_lock(%(key)s) AS acquired;

-- ---------------------------------------------------------------------------------------------
-- Connection poolers (pgqueue/db.py, README "Past one box")
-- ---------------------------------------------------------------------------------------------


-- name: backend_pid :one
-- The server process running our statements: behind a pooler it differs from the pid announced
-- at login (the pooler's own cancel key), so the connection must not rely on session state.
SELECT pg_backend_pid();


-- name: now :one
SELECT now() AS now;

-- name: migrations_table_exists :one
-- Whether yoyo ever ran on this database (its log table is in the search path).
SELECT to_regclass('_yoyo_migration') IS NOT NULL AS exists;

-- name: applied_migrations :many
-- The migrations yoyo has applied here: workers and /readyz compare them with schema/.
SELECT migration_id FROM _yoyo_migration;

-- name: bury_undecodable_jobs :many
-- Claimed jobs whose row the engine cannot read back (a run_at before year 1 written by raw
-- SQL, a jsonb number no float holds): dead at once with the reason, so no worker runs them or
-- chokes on them. Matched on (id, lease_token) like the other lease statements; recorded like
-- fail_job records a death (a job_errors row and a 'dead' event). A run_at a session may show
-- outside years 1-9999 (enqueue keeps them in UTC; a day of margin for the session's time zone)
-- becomes now(), the reason keeping the original, so the row can still be read, re-driven, deleted.
WITH input AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(reasons)s::text[]) AS t(id, token, reason)
), buried AS (
    UPDATE pgqueue.jobs AS j
    SET status = 'dead', finished_at = now(), updated_at = now(), last_error = i.reason,
        lease_token = NULL, lease_expires_at = NULL,
        run_at = CASE WHEN j.run_at < '0001-01-02 00:00:00+00' OR j.run_at > '9999-12-30 00:00:00+00' THEN now()
                      ELSE j.run_at END
    FROM input AS i WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = i.id AND j.lease_token = i.token
    RETURNING j.id, j.attempts, j.lease_owner, j.last_error, j.has_dependents
), errors AS (
    INSERT INTO pgqueue.job_errors (job_id, attempt, worker_id, error)
    SELECT id, attempts, lease_owner, last_error FROM buried
), events AS (
    INSERT INTO pgqueue.events (job_id, type, data)
    SELECT id, 'dead', jsonb_build_object('attempt', attempts, 'error', left(last_error, 500), 'retry_at', NULL)
    FROM buried ORDER BY id
)
SELECT id FROM buried
WHERE (SELECT count(pgqueue.release_dependents(p.ids))  -- an InitPlan: called once, after buried
       FROM (SELECT ARRAY(SELECT id FROM buried WHERE has_dependents) AS ids) AS p WHERE cardinality(p.ids) > 0) >= 0;

-- ---------------------------------------------------------------------------------------------
-- Periodic jobs (pgqueue/scheduler.py, README "Periodic jobs")
-- ---------------------------------------------------------------------------------------------

-- name: insert_schedule :one
-- A new schedule; no row when the name is taken (the caller says so).
INSERT INTO pgqueue.schedules (name, expression, timezone, kind, queue, payload, priority, max_attempts,
                               catch_up, catch_up_window, paused, next_fire_at)
VALUES (%(name)s, %(expression)s, %(timezone)s, %(kind)s, %(queue)s, %(payload)s::jsonb, %(priority)s,
        %(max_attempts)s, %(catch_up)s, %(catch_up_window)s, %(paused)s, %(next_fire_at)s)
ON CONFLICT (name) DO NOTHING
RETURNING *;

-- name: upsert_declared_schedules :many
-- The schedules declared in code, written by each worker at start. A schedule whose definition is
-- unchanged is not touched at all: its next_fire_at stays, so workers restarting more often than
-- it fires never push it back (river#791). A changed expression or zone starts over from the
-- given next fire time; paused is the operator's and never changes here.
INSERT INTO pgqueue.schedules AS s (name, expression, timezone, kind, queue, payload, priority, max_attempts,
                                    catch_up, catch_up_window, declared_in_code, next_fire_at)
SELECT t.name, t.expression, t.timezone, t.kind, t.queue, t.payload, t.priority, t.max_attempts, t.catch_up,
       t.catch_up_window, true, t.next_fire_at
FROM unnest(%(names)s::text[], %(expressions)s::text[], %(timezones)s::text[], %(kinds)s::text[],
            %(queues)s::text[], %(payloads)s::jsonb[], %(priorities)s::smallint[], %(max_attempts)s::int[],
            %(catch_ups)s::text[], %(catch_up_windows)s::float8[], %(next_fire_ats)s::timestamptz[])
     AS t(name, expression, timezone, kind, queue, payload, priority, max_attempts, catch_up, catch_up_window,
          next_fire_at)
ORDER BY t.name
ON CONFLICT (name) DO UPDATE
SET expression = excluded.expression, timezone = excluded.timezone, kind = excluded.kind, queue = excluded.queue,
    payload = excluded.payload, priority = excluded.priority, max_attempts = excluded.max_attempts,
    catch_up = excluded.catch_up, catch_up_window = excluded.catch_up_window, declared_in_code = true,
    next_fire_at = CASE WHEN (s.expression, s.timezone) IS DISTINCT FROM (excluded.expression, excluded.timezone)
                        THEN excluded.next_fire_at ELSE s.next_fire_at END,
    revision = s.revision + 1, updated_at = now()
WHERE (s.expression, s.timezone, s.kind, s.queue, s.payload, s.priority, s.max_attempts, s.catch_up,
       s.catch_up_window, s.declared_in_code)
      IS DISTINCT FROM (excluded.expression, excluded.timezone, excluded.kind, excluded.queue, excluded.payload,
                        excluded.priority, excluded.max_attempts, excluded.catch_up, excluded.catch_up_window, true)
RETURNING s.*;

-- name: get_schedule :one
SELECT * FROM pgqueue.schedules WHERE name = %(name)s;

-- name: list_schedules :many
SELECT * FROM pgqueue.schedules ORDER BY name;

-- name: pause_schedule :one
UPDATE pgqueue.schedules SET paused = true, revision = revision + 1, updated_at = now()
WHERE name = %(name)s
RETURNING *;

-- name: resume_schedule :one
-- Fire times that passed while paused are not missed, they were not wanted: the schedule starts
-- again from the given next fire time (computed from now). A schedule not paused is unchanged.
UPDATE pgqueue.schedules
SET paused = false, next_fire_at = CASE WHEN paused THEN %(next_fire_at)s ELSE next_fire_at END,
    revision = revision + CASE WHEN paused THEN 1 ELSE 0 END,
    updated_at = CASE WHEN paused THEN now() ELSE updated_at END
WHERE name = %(name)s
RETURNING *;

-- name: delete_schedule :one
-- Its fire records go with it; the jobs it made stay.
DELETE FROM pgqueue.schedules WHERE name = %(name)s RETURNING id;

-- name: due_schedules :many
-- The schedules due now (soonest first, a bounded batch), and the database's clock: a scheduler
-- plans every fire from these two alone, never from a timer of its own.
SELECT s.*, now() AS db_now FROM pgqueue.schedules AS s
WHERE NOT s.paused AND s.next_fire_at <= now()
ORDER BY s.next_fire_at, s.id
LIMIT %(limit)s;

-- name: fire_schedules :many
-- One scheduler pass, as one statement, so no crash between two steps can leave a fire half done
-- (procrastinate#1495): for each planned schedule still at the revision the plan was made from
-- (locked in id order, SKIP LOCKED: another worker busy firing it is left to it), record each fire
-- time under the unique (schedule_id, fire_at), insert one job per fire recorded here (ids drawn
-- first, so the fire row and its job are written together), and move next_fire_at on. A fire
-- time already recorded (by another worker, by an earlier pass) inserts nothing.
-- Returns the fires that became jobs.
WITH plan AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(revisions)s::bigint[], %(next_fire_ats)s::timestamptz[])
        AS t(id, revision, next_fire_at)
), locked AS MATERIALIZED (
    SELECT s.id FROM pgqueue.schedules AS s JOIN plan AS p ON p.id = s.id
    WHERE s.id = ANY(%(ids)s::bigint[]) AND s.revision = p.revision AND NOT s.paused
    ORDER BY s.id
    FOR UPDATE OF s SKIP LOCKED
), wanted AS MATERIALIZED (
    SELECT f.schedule_id, f.fire_at, nextval('pgqueue.jobs_id_seq') AS job_id
    FROM unnest(%(fire_schedule_ids)s::bigint[], %(fire_ats)s::timestamptz[]) AS f(schedule_id, fire_at)
    WHERE f.schedule_id IN (SELECT id FROM locked)
), recorded AS (
    INSERT INTO pgqueue.schedule_fires (schedule_id, fire_at, job_id)
    SELECT schedule_id, fire_at, job_id FROM wanted ORDER BY schedule_id, fire_at
    ON CONFLICT (schedule_id, fire_at) DO NOTHING
    RETURNING schedule_id, fire_at, job_id
), enqueued AS (
    INSERT INTO pgqueue.jobs (id, queue, kind, payload, priority, run_at, max_attempts)
    SELECT r.job_id, s.queue, s.kind, s.payload, s.priority, r.fire_at, s.max_attempts
    FROM recorded AS r JOIN pgqueue.schedules AS s ON s.id = r.schedule_id
    ORDER BY r.fire_at, r.job_id
    RETURNING id
), advanced AS (
    UPDATE pgqueue.schedules AS s
    SET next_fire_at = p.next_fire_at, revision = s.revision + 1, updated_at = now(),
        last_fire_at = greatest(s.last_fire_at, (SELECT max(w.fire_at) FROM wanted AS w WHERE w.schedule_id = s.id))
    FROM plan AS p
    WHERE s.id = ANY(ARRAY(SELECT id FROM locked)) AND s.id = p.id
    RETURNING s.id
)
SELECT s.name AS schedule, r.fire_at, r.job_id
FROM recorded AS r JOIN pgqueue.schedules AS s ON s.id = r.schedule_id
CROSS JOIN (SELECT count(*) FROM enqueued) AS e CROSS JOIN (SELECT count(*) FROM advanced) AS a
ORDER BY r.fire_at, s.name;

-- name: next_schedule_due :one
-- When the soonest schedule is due (NULL: none), and the database's clock: the scheduler sleeps until then.
SELECT (SELECT min(next_fire_at) FROM pgqueue.schedules WHERE NOT paused) AS next_fire_at, now() AS db_now;

-- name: prune_schedule_fires :many
-- Fire records older than a week (no pass plans fire times that far back: next_fire_at only
-- moves forward, or restarts from now), in a bounded batch.
DELETE FROM pgqueue.schedule_fires
WHERE ctid = ANY(ARRAY(SELECT ctid FROM pgqueue.schedule_fires
                       WHERE created_at < now() - interval '7 days' LIMIT %(limit)s))
RETURNING schedule_id;

-- ---------------------------------------------------------------------------------------------
-- Job dependencies (schema/0009.dependencies.sql, README "Job dependencies")
-- ---------------------------------------------------------------------------------------------

-- name: lock_dependency_parents :many
-- The parents a batch of new jobs will depend on, locked in id order until the batch commits and
-- flagged has_dependents: a parent cannot finish meanwhile (its completion waits for the lock), so
-- either the enqueue sees it finished, or its completion sees the flag and the new dependents
-- (release_dependents reads them on a fresh snapshot). FOR NO KEY UPDATE, like the heartbeat
-- (which skips it meanwhile) and unlike a handler's lease check (FOR KEY SHARE), which it passes.
WITH locked AS MATERIALIZED (
    SELECT id FROM pgqueue.jobs WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id FOR NO KEY UPDATE
)
UPDATE pgqueue.jobs AS j SET has_dependents = true
WHERE j.id = ANY(ARRAY(SELECT id FROM locked))
RETURNING j.id, j.status, j.owner_id;

-- name: insert_dependent_jobs :many
-- insert_jobs with ids drawn beforehand (reserve_job_ids, in batch order, so a job's parents in
-- the same batch have smaller ids), a status ('waiting' for jobs with parents) and has_dependents
-- for the jobs later items of the batch depend on.
INSERT INTO pgqueue.jobs (id, queue, kind, payload, priority, run_at, max_attempts, unique_key, owner_id, status,
                          has_dependents, concurrency_key)
SELECT t.id, t.queue, t.kind, t.payload, t.priority,
       coalesce(t.run_at, now() + make_interval(secs => t.delay)), t.max_attempts, t.unique_key, t.owner_id, t.status,
       t.has_dependents, t.concurrency_key
FROM unnest(%(ids)s::bigint[], %(queues)s::text[], %(kinds)s::text[], %(payloads)s::jsonb[],
            %(priorities)s::smallint[], %(run_ats)s::timestamptz[], %(delays)s::float8[], %(max_attempts)s::int[],
            %(unique_keys)s::text[], %(owner_ids)s::text[], %(statuses)s::text[], %(has_dependents)s::boolean[],
            %(concurrency_keys)s::text[])
     AS t(id, queue, kind, payload, priority, run_at, delay, max_attempts, unique_key, owner_id, status, has_dependents,
          concurrency_key)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('waiting', 'queued', 'running', 'failed')
DO NOTHING
RETURNING id;

-- name: insert_dependencies :none
INSERT INTO pgqueue.job_dependencies (job_id, depends_on, run_if_failed)
SELECT * FROM unnest(%(job_ids)s::bigint[], %(parent_ids)s::bigint[], %(run_if_failed)s::boolean[]);

-- name: resolve_waiting :one
-- Settle just-inserted waiting jobs whose parents already finished (queued, or cancelled).
SELECT pgqueue.resolve_waiting(%(ids)s::bigint[]) AS settled;

-- name: jobs_by_ids :many
SELECT * FROM pgqueue.jobs WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id;

-- name: job_parents :many
-- The jobs a job depends on, with their status (oldest first).
SELECT d.depends_on AS id, p.status, d.run_if_failed
FROM pgqueue.job_dependencies d JOIN pgqueue.jobs p ON p.id = d.depends_on
WHERE d.job_id = %(job_id)s ORDER BY d.depends_on;

-- name: has_waiting_dependents :one
-- Whether jobs wait on this one (deleting it cancels them first, as cancelling it would).
SELECT EXISTS (
    SELECT 1 FROM pgqueue.job_dependencies d JOIN pgqueue.jobs c ON c.id = d.job_id
    WHERE d.depends_on = %(id)s AND c.status = 'waiting'
) AS waiting;


-- ---------------------------------------------------------------------------------------------
-- Queues: pause and resume, concurrency and rate limits (schema/0008.queues.sql, README "Queues")
-- The limits are enforced in claim_jobs / claim_suspect_job; these statements only change them.
-- Each change is announced on pgqueue_control ("pause NAME", "resume NAME", "limits NAME") so
-- idle workers claim again at once; the claim reads the row itself, so a worker that missed the
-- notification never claims from a queue paused before its claim began.
-- ---------------------------------------------------------------------------------------------

-- name: queue_statuses :many
-- Every queue that has jobs or a row, with state, limits and counts.
SELECT * FROM pgqueue.queue_status;

-- name: queue_status :one
-- One queue (none: it has no row and no jobs, so it runs unlimited).
SELECT * FROM pgqueue.queue_status WHERE name = %(name)s;

-- name: set_queue_paused :one
-- Pause or resume a queue (creating its row). Running jobs are left to finish; enqueue still works.
WITH changed AS (
    INSERT INTO pgqueue.queues AS q (name, paused) VALUES (%(name)s, %(paused)s)
    ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()
    RETURNING q.name, q.paused
), wake AS (
    SELECT pg_notify('pgqueue_control', CASE WHEN paused THEN 'pause ' ELSE 'resume ' END || name) FROM changed
)
SELECT changed.name FROM changed, (SELECT count(*) FROM wake) AS w;

-- name: set_queue_limits :one
-- Set or remove limits (%(set_X)s false: leave X as it is); a new row gets only what is set.
-- Lowering a limit does not stop running jobs: new claims wait until fewer run than the limit.
WITH changed AS (
    INSERT INTO pgqueue.queues AS q (name, concurrency_limit, rate_limit, rate_period,
                                     key_concurrency_limit, key_rate_limit, key_rate_period)
    VALUES (%(name)s, %(concurrency_limit)s, %(rate_limit)s, %(rate_period)s,
            %(key_concurrency_limit)s, %(key_rate_limit)s, %(key_rate_period)s)
    ON CONFLICT (name) DO UPDATE SET
        concurrency_limit = CASE WHEN %(set_concurrency_limit)s THEN EXCLUDED.concurrency_limit ELSE q.concurrency_limit END,
        rate_limit = CASE WHEN %(set_rate)s THEN EXCLUDED.rate_limit ELSE q.rate_limit END,
        rate_period = CASE WHEN %(set_rate)s THEN EXCLUDED.rate_period ELSE q.rate_period END,
        key_concurrency_limit = CASE WHEN %(set_key_concurrency_limit)s THEN EXCLUDED.key_concurrency_limit
                                     ELSE q.key_concurrency_limit END,
        key_rate_limit = CASE WHEN %(set_key_rate)s THEN EXCLUDED.key_rate_limit ELSE q.key_rate_limit END,
        key_rate_period = CASE WHEN %(set_key_rate)s THEN EXCLUDED.key_rate_period ELSE q.key_rate_period END,
        updated_at = now()
    RETURNING q.name
), wake AS (
    SELECT pg_notify('pgqueue_control', 'limits ' || name) FROM changed
)
SELECT changed.name FROM changed, (SELECT count(*) FROM wake) AS w;
