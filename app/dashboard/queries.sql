-- The dashboard's read statements (app/dashboard/api.py), each under a `-- name: NAME :cardinality`
-- header. Each runs in its own transaction under `statement_timeout` (set_statement_timeout),
-- and each stays on an index or a bounded scan so it is fast with millions of jobs: see the
-- README, "Dashboard", for the figures with 1,000,000 jobs.

-- name: set_statement_timeout :one
-- SET LOCAL, as a function so the value can be a parameter: ends with the transaction. JIT off:
-- these statements are short, and compiling them (the planner overestimates the depth join)
-- cost more than running them.
SELECT set_config('statement_timeout', %(timeout)s::text, true), set_config('jit', 'off', true);

-- name: job_table_estimate :one
-- The planner's idea of the jobs table: its row count (-1 before the first ANALYZE) and, per
-- status, the share ANALYZE measured. Reading the catalog costs nothing, whatever the size.
SELECT c.reltuples::bigint AS rows,
       coalesce((SELECT jsonb_object_agg(v.status, v.freq)
                 FROM pg_stats AS st,
                      unnest(st.most_common_vals::text::text[], st.most_common_freqs) AS v(status, freq)
                 WHERE st.schemaname = 'pgqueue' AND st.tablename = 'jobs' AND st.attname = 'status'),
                '{}'::jsonb) AS shares
FROM pg_class AS c
WHERE c.oid = 'pgqueue.jobs'::regclass;

-- name: exact_status_counts :many
-- Exact jobs per status: one scan of the table, used while the table is small.
SELECT status, count(*) AS jobs FROM pgqueue.jobs GROUP BY status;

-- name: live_status_counts :many
-- Exact counts of the live statuses, each capped at %(cap)s + 1 rows: queued and failed come
-- from the claim index, running from the lease index, so a large finished history costs
-- nothing; a status at the cap is shown as an estimate instead.
-- (Each status is a literal: with a parameter the planner could not prove the partial index's
-- predicate and would scan the table.)
SELECT 'queued' AS status, (SELECT count(*) FROM (SELECT 1 FROM pgqueue.jobs WHERE status = 'queued'
                                                  LIMIT %(cap)s + 1) AS capped) AS jobs
UNION ALL
SELECT 'failed', (SELECT count(*) FROM (SELECT 1 FROM pgqueue.jobs WHERE status = 'failed'
                                        LIMIT %(cap)s + 1) AS capped)
UNION ALL
SELECT 'running', (SELECT count(*) FROM (SELECT 1 FROM pgqueue.jobs WHERE status = 'running'
                                         LIMIT %(cap)s + 1) AS capped);

-- name: finished_per_minute :many
-- Jobs that ended in each of the last 60 minutes by outcome, and failed attempts (rows of
-- job_errors) in the same minutes. Ends come from jobs_finished_idx; failures are the
-- `failed` and `dead` events found through the events table's BRIN index on created_at
-- (the newest blocks only), so neither scan grows with the table's history.
WITH minutes AS (
    SELECT m AS minute FROM generate_series(date_trunc('minute', now()) - interval '59 minutes',
                                            date_trunc('minute', now()), interval '1 minute') AS m
), ended AS (
    SELECT date_trunc('minute', finished_at) AS minute,
           count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE status = 'dead') AS dead,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled
    FROM pgqueue.jobs
    WHERE finished_at >= date_trunc('minute', now()) - interval '59 minutes'
      AND (%(owner_id)s::text IS NULL OR owner_id = %(owner_id)s::text)
    GROUP BY 1
), failures AS (
    SELECT date_trunc('minute', e.created_at) AS minute, count(*) AS failed
    FROM pgqueue.events AS e
    WHERE e.created_at >= date_trunc('minute', now()) - interval '59 minutes' AND e.type IN ('failed', 'dead')
      AND (%(owner_id)s::text IS NULL
           OR EXISTS (SELECT 1 FROM pgqueue.jobs AS j WHERE j.id = e.job_id AND j.owner_id = %(owner_id)s::text))
    GROUP BY 1
)
SELECT m.minute, coalesce(e.succeeded, 0) AS succeeded, coalesce(e.dead, 0) AS dead,
       coalesce(e.cancelled, 0) AS cancelled, coalesce(f.failed, 0) AS failed
FROM minutes AS m
LEFT JOIN ended AS e USING (minute)
LEFT JOIN failures AS f USING (minute)
ORDER BY m.minute;

-- name: finished_per_hour :many
-- Jobs that ended per hour from %(since)s (an hour boundary) to %(until)s, by outcome, from
-- jobs_finished_idx. The dashboard keeps finished hours cached (they do not change) and asks
-- for a few missing hours at a time, so one call scans a bounded slice of history.
SELECT date_trunc('hour', finished_at) AS hour,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE status = 'dead') AS dead,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled
FROM pgqueue.jobs
WHERE finished_at >= %(since)s AND finished_at < %(until)s
  AND (%(owner_id)s::text IS NULL OR owner_id = %(owner_id)s::text)
GROUP BY 1
ORDER BY 1;

-- name: queue_table :many
-- Per queue: runnable (queued or failed, due), scheduled (not yet due), failed-and-waiting,
-- running, the oldest wait among runnable jobs, and jobs ended in the last 5 minutes. Live
-- jobs come from the claim and lease indexes (capped at %(cap)s rows per queue and status
-- group, then flagged as capped); ended jobs from jobs_finished_idx. waiting_over_an_hour
-- (runnable since before the depth chart's first point) is the depth chart's base line.
WITH live AS (
    SELECT queue,
           count(*) FILTER (WHERE status = 'queued' AND run_at <= now()) AS queued,
           count(*) FILTER (WHERE status = 'queued' AND run_at > now()) AS scheduled,
           count(*) FILTER (WHERE status = 'failed') AS failed_waiting,
           count(*) FILTER (WHERE status = 'running') AS running,
           extract(epoch FROM now() - min(run_at) FILTER (WHERE status IN ('queued', 'failed')
                                                           AND run_at <= now()))::float8 AS oldest_wait_seconds,
           count(*) FILTER (WHERE status IN ('queued', 'failed')
                              AND run_at <= date_trunc('minute', now()) - interval '60 minutes') AS waiting_over_an_hour,
           count(*) >= %(cap)s AS capped
    FROM (SELECT queue, status, run_at FROM pgqueue.jobs WHERE status IN ('queued', 'failed')  -- jobs_claim_idx
          UNION ALL
          SELECT queue, status, run_at FROM pgqueue.jobs WHERE status = 'running'  -- jobs_lease_idx
          LIMIT %(cap)s) AS j
    GROUP BY queue
), recent AS (
    SELECT queue, count(*) AS ended FROM pgqueue.jobs
    WHERE finished_at >= now() - interval '5 minutes' GROUP BY queue
)
SELECT coalesce(l.queue, r.queue) AS queue, coalesce(l.queued, 0) AS queued, coalesce(l.scheduled, 0) AS scheduled,
       coalesce(l.failed_waiting, 0) AS failed_waiting, coalesce(l.running, 0) AS running,
       l.oldest_wait_seconds, coalesce(r.ended, 0)::float8 / 5 AS jobs_per_minute, coalesce(l.capped, false) AS capped,
       coalesce(l.waiting_over_an_hour, 0) AS waiting_over_an_hour
FROM live AS l FULL JOIN recent AS r USING (queue)
ORDER BY 1;

-- name: queue_settings :many
-- Queues that were paused or given limits (pgqueue.queues: one small row per such queue).
SELECT name, paused, concurrency_limit, rate_limit, rate_period, key_concurrency_limit, key_rate_limit,
       key_rate_period
FROM pgqueue.queues
ORDER BY name;

-- name: depth_over_time :many
-- Jobs waiting (queued or failed, due, not started) per queue at each 5-minute point of the
-- last hour: an estimate rebuilt from the jobs' own timestamps. Only jobs whose wait touched the
-- hour are read (due within the hour: jobs_claim_idx; running and started within it:
-- jobs_lease_idx; ended within it: jobs_finished_idx), at most %(cap)s of them (the answer
-- says when the cap was hit); jobs runnable since before the hour are waiting at every point
-- and come from queue_table's waiting_over_an_hour. A job waiting to retry counts from its
-- retry time; the waits before earlier attempts of a retried job are not in its row, so they
-- are missing: an approximation, labelled so. (The first version joined every live job to
-- every point: 315 ms with 1,000,000 jobs; this one reads about 11,000 rows: 35 ms.)
WITH points AS (
    SELECT p AS at FROM generate_series(date_trunc('minute', now()) - interval '60 minutes',
                                        date_trunc('minute', now()), interval '5 minutes') AS p
), recent AS MATERIALIZED (
    -- each job's wait as [ready, gone): a job waiting to retry has not gone yet
    SELECT queue, greatest(created_at, run_at) AS ready,
           CASE WHEN status = 'failed' THEN 'infinity'
                ELSE coalesce(least(started_at, finished_at), 'infinity') END AS gone
    FROM (
        SELECT queue, status, created_at, run_at, started_at, finished_at FROM pgqueue.jobs
        WHERE status IN ('queued', 'failed') AND run_at > date_trunc('minute', now()) - interval '60 minutes'
        UNION ALL
        SELECT queue, status, created_at, run_at, started_at, finished_at FROM pgqueue.jobs
        WHERE status = 'running' AND started_at > date_trunc('minute', now()) - interval '60 minutes'
        UNION ALL
        SELECT queue, status, created_at, run_at, started_at, finished_at FROM pgqueue.jobs
        WHERE finished_at >= date_trunc('minute', now()) - interval '60 minutes'
    ) AS c
    LIMIT %(cap)s
)
-- (a point where no such job waited is one row with a NULL queue)
SELECT p.at, c.queue, count(c.queue) AS waiting, (SELECT count(*) FROM recent) >= %(cap)s AS capped
FROM points AS p
LEFT JOIN recent AS c ON c.ready <= p.at AND c.gone > p.at
GROUP BY p.at, c.queue
ORDER BY p.at, c.queue;

-- name: workers :many
-- Every registered worker (pgqueue.worker_status) with the jobs it runs now (jobs_lease_idx).
SELECT w.id, w.hostname, w.pid, w.queues, w.concurrency, w.started_at, w.heartbeat_at, w.alive,
       (SELECT count(*) FROM pgqueue.jobs AS j WHERE j.status = 'running' AND j.lease_owner = w.id) AS running
FROM pgqueue.worker_status AS w
ORDER BY w.alive DESC, w.started_at, w.id;

-- name: job_owner :one
-- Who owns a job (the job page's extra sections check it before showing anything).
SELECT owner_id, kind FROM pgqueue.jobs WHERE id = %(job_id)s;

-- name: job_file :one
-- An ingest job's file and its line counts (files_job_idx).
SELECT id, name, size, bytes_read, lines_total, lines_valid, lines_invalid, lines_blank, created_at
FROM app.files WHERE job_id = %(job_id)s;

-- name: file_bad_lines :many
-- The first %(limit)s lines of a file that were not valid entries, with why (the primary key).
SELECT line_no, reason, excerpt FROM app.ingest_errors
WHERE file_id = %(file_id)s ORDER BY line_no LIMIT %(limit)s;

-- name: job_sync_part :one
-- An api_ingest job's sync and its part's counts (api_sync_parts_job_idx).
SELECT s.id AS sync_id, s.source, s.target, p.part, p.pages, p.events, p.inserted, p.invalid, p.retries,
       p.rate_limited, p.bytes, p.restarts, p.total, p.last_page_at,
       (SELECT count(*) FROM app.api_sync_parts AS o WHERE o.sync_id = s.id) AS parts
FROM app.api_sync_parts AS p JOIN app.api_syncs AS s ON s.id = p.sync_id
WHERE p.job_id = %(job_id)s;
