-- The chaos harness's own statements (pgqueue/chaos/), kept apart from the engine's
-- queries.sql: the harness is a tool that inspects the engine's tables from outside.
-- Same format: `-- name: NAME :cardinality`, %(param)s placeholders.

-- name: create_ledger :none
-- Every successful side effect of a chaos job: one row per committed ctx.transaction().
CREATE SCHEMA IF NOT EXISTS pgqueue_chaos;
CREATE TABLE IF NOT EXISTS pgqueue_chaos.ledger (
    job_id     bigint      NOT NULL,
    attempt    integer     NOT NULL,
    worker_pid integer     NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- name: record_side_effect :none
-- Written by a handler inside ctx.transaction(): commits only while the job's lease is held.
INSERT INTO pgqueue_chaos.ledger (job_id, attempt, worker_pid) VALUES (%(job_id)s, %(attempt)s, %(pid)s);

-- name: reset_engine :none
-- A clean slate per scenario (fresh ids); the harness refuses a database holding other jobs.
TRUNCATE pgqueue.jobs, pgqueue.events, pgqueue.job_errors, pgqueue.checkpoints, pgqueue.job_dependencies,
         pgqueue.workers, pgqueue_chaos.ledger RESTART IDENTITY;

-- name: foreign_jobs :one
-- Jobs outside the chaos queue: the harness would wipe them, so it refuses to run.
SELECT count(*) FROM pgqueue.jobs WHERE queue <> %(queue)s;

-- name: live_workers :one
SELECT count(*) FROM pgqueue.workers WHERE heartbeat_at > now() - interval '1 minute';

-- name: analyze_jobs :none
ANALYZE pgqueue.jobs;

-- name: workers_registered :one
SELECT count(*) FROM pgqueue.workers WHERE pid = ANY(%(pids)s);

-- name: listeners :one
-- Open LISTEN connections of workers on this database (they come back after a fault).
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'pgqueue-worker-listen';

-- name: progress :one
-- Where the run stands: succeeded, dead, cancelled, running, waiting.
SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'dead'),
       count(*) FILTER (WHERE status = 'cancelled'), count(*) FILTER (WHERE status = 'running'),
       count(*) FILTER (WHERE status IN ('queued', 'failed'))
FROM pgqueue.jobs WHERE queue = %(queue)s;

-- name: status_counts :many
SELECT status, count(*) FROM pgqueue.jobs WHERE queue = %(queue)s GROUP BY status;

-- name: running_jobs :many
-- The jobs in flight right now (snapshotted at each fault).
SELECT id FROM pgqueue.jobs WHERE status = 'running';

-- name: running_jobs_of_pid :many
-- The jobs a (dead) worker process held; its id is host:pid:random.
SELECT id FROM pgqueue.jobs WHERE status = 'running' AND split_part(lease_owner, ':', -2) = %(pid)s::text;

-- name: running_claimed_before :many
-- Jobs still running that were claimed before a moment (the fault): in flight at it.
SELECT id FROM pgqueue.jobs WHERE status = 'running' AND started_at < %(before)s;

-- name: running_claimed_before_start :many
-- After a server restart: jobs still running that were claimed before the server came up.
SELECT id FROM pgqueue.jobs WHERE status = 'running' AND started_at < pg_postmaster_start_time();

-- name: server_clock :one
SELECT clock_timestamp();

-- name: terminate_backends :one
-- Kill every pgqueue session of this database (pool, LISTEN, heartbeat, maintenance).
SELECT clock_timestamp(), count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE 'pgqueue%%' AND pid <> pg_backend_pid();

-- name: dead_jobs :many
SELECT id, kind FROM pgqueue.jobs WHERE queue = %(queue)s AND status = 'dead' ORDER BY id;

-- name: repeated_side_effects :many
-- Jobs whose side effect committed more than once (a duplicate run).
SELECT job_id, count(*) FROM pgqueue_chaos.ledger GROUP BY job_id HAVING count(*) > 1 ORDER BY job_id;

-- name: side_effects :one
SELECT count(*) FROM pgqueue_chaos.ledger;

-- name: lease_rescues :many
-- Every rescue (an attempt charged because a lease expired): who held the job, and when.
SELECT job_id, attempt, worker_id, extract(epoch FROM failed_at)::float8 FROM pgqueue.job_errors
WHERE error LIKE 'lease expired%%' ORDER BY id;

-- name: finish_times :many
-- When each succeeded job finished (epoch seconds, server clock), for throughput windows.
SELECT extract(epoch FROM finished_at)::float8 FROM pgqueue.jobs
WHERE queue = %(queue)s AND status = 'succeeded' ORDER BY finished_at;

-- name: last_settled :one
-- When the last of some jobs reached a terminal state (NULL if one has not).
SELECT CASE WHEN bool_and(status IN ('succeeded', 'dead', 'cancelled')) THEN extract(epoch FROM max(finished_at))::float8 END
FROM pgqueue.jobs WHERE id = ANY(%(ids)s);

-- name: dead_tuples :one
-- Dead and live row versions of pgqueue.jobs (cumulative statistics, updated within a second).
SELECT n_dead_tup, n_live_tup FROM pg_stat_user_tables WHERE relid = 'pgqueue.jobs'::regclass;

-- name: begin_repeatable_read :none
-- The xmin pin: a transaction that takes a snapshot and then sits idle.
BEGIN ISOLATION LEVEL REPEATABLE READ;

-- name: take_snapshot :one
SELECT 1;

-- name: rollback :none
ROLLBACK;

-- name: max_connections :one
SELECT current_setting('max_connections')::int;

-- name: jobs_with_side_effect :many
-- Which of some jobs had committed their side effect (at least once) by now.
SELECT DISTINCT job_id FROM pgqueue_chaos.ledger WHERE job_id = ANY(%(ids)s);

-- name: idle_connection :one
SELECT 1;
