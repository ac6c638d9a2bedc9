-- Every SQL statement of the web app, each under a `-- name: NAME :cardinality` header with
-- %(param)s placeholders. Loaded once by app/store.py with pgqueue.sql.parse_queries.
-- Engine statements (enqueue, claim, cancel ...) are the engine's: see pgqueue/sql/queries.sql.

-- name: insert_user :one
-- A new user (the `create-user` command).
INSERT INTO app.users (name, is_admin) VALUES (%(name)s, %(is_admin)s)
RETURNING id, name, is_admin, created_at;

-- name: user_by_name :one
SELECT id, name, is_admin, created_at FROM app.users WHERE name = %(name)s;

-- name: insert_token :none
-- Only the SHA-256 of the token is kept.
INSERT INTO app.api_tokens (token_hash, user_id, label) VALUES (%(token_hash)s, %(user_id)s, %(label)s);

-- name: user_by_token_hash :one
-- The user holding an API token, by the token's hash (the primary key: one index probe).
SELECT t.token_hash, u.id, u.name, u.is_admin, u.created_at
FROM app.api_tokens AS t JOIN app.users AS u ON u.id = t.user_id
WHERE t.token_hash = %(token_hash)s;

-- name: user_by_id :one
-- The user named by a verified stream token (they may have been deleted since it was issued).
SELECT id, name, is_admin, created_at FROM app.users WHERE id = %(id)s;

-- name: list_jobs :many
-- One page of jobs matching the filters (a NULL filter matches everything), plus the total
-- number of matches. The CTE is NOT MATERIALIZED so the count and the page are planned as two
-- index-friendly scans instead of copying every matching row. The LEFT JOIN keeps one row (with
-- the total and NULL job columns) when the page is empty. Sort keys come from a fixed list
-- (created = id order, priority, status); status sorts by lifecycle, not alphabetically; id breaks ties.
-- %(count_limit)s (NULL: no limit) stops the count early: a dashboard shows "1,000+" instead of
-- counting a million rows on every page. Text search is a plain ILIKE over the payload's JSON text and the last error. `scheduled`:
-- queued to run later; `has_error`: failed at least once. (app/sql/bulk.sql repeats this WHERE.)
WITH matching AS NOT MATERIALIZED (
    SELECT * FROM pgqueue.jobs
    WHERE (%(owner_id)s::text IS NULL OR owner_id = %(owner_id)s::text)
      AND (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s::text[]))
      AND (%(kinds)s::text[] IS NULL OR kind = ANY(%(kinds)s::text[]))
      AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
      AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s::timestamptz)
      AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s::timestamptz)
      AND (%(pattern)s::text IS NULL
           OR payload::text ILIKE %(pattern)s::text OR last_error ILIKE %(pattern)s::text)
      AND (%(scheduled)s::bool IS NULL OR (status = 'queued' AND run_at > now()) = %(scheduled)s::bool)
      AND (%(has_error)s::bool IS NULL OR (last_error IS NOT NULL) = %(has_error)s::bool)
)
SELECT total.jobs AS total, page.*
FROM (SELECT count(*) AS jobs FROM (SELECT 1 FROM matching LIMIT %(count_limit)s) AS counted) AS total
LEFT JOIN LATERAL (
    -- Sorted by creation (the default), the primary key walks the table in order and stops after
    -- one page: ids are handed out at insert, so id order is creation order. Only the branch
    -- whose constant condition holds runs (the others are a one-time filter that is false).
    (SELECT * FROM matching WHERE %(sort)s::text = 'created' AND %(descending)s::bool
     ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s)
    UNION ALL
    (SELECT * FROM matching WHERE %(sort)s::text = 'created' AND NOT %(descending)s::bool
     ORDER BY id LIMIT %(limit)s OFFSET %(offset)s)
    UNION ALL
    (SELECT * FROM matching WHERE %(sort)s::text <> 'created'
    ORDER BY
        CASE WHEN %(sort)s::text = 'priority' AND NOT %(descending)s::bool THEN priority END ASC,
        CASE WHEN %(sort)s::text = 'priority' AND %(descending)s::bool THEN priority END DESC,
        CASE WHEN %(sort)s::text = 'status' AND NOT %(descending)s::bool
             THEN array_position(ARRAY['waiting', 'queued', 'running', 'failed', 'succeeded', 'dead', 'cancelled'], status)
        END ASC,
        CASE WHEN %(sort)s::text = 'status' AND %(descending)s::bool
             THEN array_position(ARRAY['waiting', 'queued', 'running', 'failed', 'succeeded', 'dead', 'cancelled'], status)
        END DESC,
        CASE WHEN NOT %(descending)s::bool THEN id END ASC,
        CASE WHEN %(descending)s::bool THEN id END DESC
    LIMIT %(limit)s OFFSET %(offset)s)
) AS page ON true;

-- name: job_owners :many
-- Owner and status of many jobs at once (bulk actions check ownership with one query).
SELECT id, owner_id, status FROM pgqueue.jobs WHERE id = ANY(%(ids)s::bigint[]);

-- name: job_counts :many
-- Jobs per status, per kind and per queue in one scan (GROUPING SETS); in each row exactly one
-- of status, kind, queue is set and names the group. NULL owner_id = every owner (admins).
SELECT status, kind, queue, count(*) AS jobs
FROM pgqueue.jobs
WHERE (%(owner_id)s::text IS NULL OR owner_id = %(owner_id)s::text)
GROUP BY GROUPING SETS ((status), (kind), (queue))
ORDER BY status, kind, queue;

-- name: finished_per_minute :many
-- Jobs that finished (succeeded, dead, cancelled) in each of the last 60 minutes, oldest first,
-- minutes without any included as zeros (for charts). Served by jobs_finished_idx.
SELECT m.minute,
       count(j.id) FILTER (WHERE j.status = 'succeeded') AS succeeded,
       count(j.id) FILTER (WHERE j.status = 'dead') AS dead,
       count(j.id) FILTER (WHERE j.status = 'cancelled') AS cancelled
FROM generate_series(date_trunc('minute', now()) - interval '59 minutes', date_trunc('minute', now()),
                     interval '1 minute') AS m(minute)
LEFT JOIN pgqueue.jobs AS j
       ON j.finished_at >= m.minute AND j.finished_at < m.minute + interval '1 minute'
      AND (%(owner_id)s::text IS NULL OR j.owner_id = %(owner_id)s::text)
GROUP BY m.minute
ORDER BY m.minute;

-- name: job_gauges :many
-- Jobs per queue and status right now (the /metrics gauge).
SELECT queue, status, count(*) AS jobs FROM pgqueue.jobs GROUP BY queue, status ORDER BY queue, status;

-- name: wait_time_histogram :one
-- How long jobs started in the last %(window_seconds)s waited between becoming runnable (run_at)
-- and being claimed (started_at): cumulative counts per upper bound, their sum and count.
WITH waits AS (
    SELECT greatest(extract(epoch FROM started_at - run_at), 0)::float8 AS wait
    FROM pgqueue.jobs
    WHERE started_at > now() - make_interval(secs => %(window_seconds)s)
)
SELECT array(SELECT count(*) FILTER (WHERE w.wait <= b.le)
             FROM unnest(%(bounds)s::float8[]) WITH ORDINALITY AS b(le, n)
             LEFT JOIN waits AS w ON true
             GROUP BY b.n ORDER BY b.n) AS bucket_counts,
       (SELECT coalesce(sum(wait), 0) FROM waits) AS sum,
       (SELECT count(*) FROM waits) AS count;

-- name: schedule_recent_runs :many
-- The schedules' latest fires, newest first, at most %(per_schedule)s each, with their jobs'
-- statuses while the jobs are kept (the dashboard's Schedules page; served by schedule_fires' key).
SELECT s.name, f.fire_at, f.job_id, j.status
FROM pgqueue.schedules AS s
CROSS JOIN LATERAL (
    SELECT fire_at, job_id FROM pgqueue.schedule_fires
    WHERE schedule_id = s.id ORDER BY fire_at DESC LIMIT %(per_schedule)s
) AS f
LEFT JOIN pgqueue.jobs AS j ON j.id = f.job_id
WHERE s.name = ANY(%(names)s::text[])
ORDER BY s.name, f.fire_at DESC;
