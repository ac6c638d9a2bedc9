-- Bulk actions over a filter (app/kinds/bulk.py), each under a `-- name: NAME :cardinality`
-- header. The WHERE clause is list_jobs' (app/sql/queries.sql): keep the two in step.

-- name: max_job_id :one
-- The newest job id now: a filter-wide action touches no job enqueued after it was asked for.
SELECT coalesce(max(id), 0) AS max_id FROM pgqueue.jobs;

-- name: bulk_job_ids :many
-- The next %(limit)s ids after %(after_id)s, up to %(max_id)s, that match the filter (a NULL
-- filter matches everything), in id order: a keyset walk that a retried, cancelled or deleted
-- job leaving the filter cannot make skip or repeat anything.
SELECT id FROM pgqueue.jobs
WHERE id > %(after_id)s AND id <= %(max_id)s
  AND (%(owner_id)s::text IS NULL OR owner_id = %(owner_id)s::text)
  AND (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s::text[]))
  AND (%(kinds)s::text[] IS NULL OR kind = ANY(%(kinds)s::text[]))
  AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
  AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s::timestamptz)
  AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s::timestamptz)
  AND (%(pattern)s::text IS NULL
       OR payload::text ILIKE %(pattern)s::text OR last_error ILIKE %(pattern)s::text)
  AND (%(scheduled)s::bool IS NULL OR (status = 'queued' AND run_at > now()) = %(scheduled)s::bool)
  AND (%(has_error)s::bool IS NULL OR (last_error IS NOT NULL) = %(has_error)s::bool)
ORDER BY id
LIMIT %(limit)s;
