-- The statements of log-file ingestion (app/ingest.py, app/uploads.py), each under a
-- `-- name: NAME :cardinality` header with %(param)s placeholders. Tables: schema/0003.ingest.sql.

-- name: insert_file :one
-- Record an uploaded file (already in storage); its ingest job is enqueued in the same transaction.
INSERT INTO app.files (owner_id, name, content_type, size, sha256, storage_url, storage_key)
VALUES (%(owner_id)s, %(name)s, %(content_type)s, %(size)s, %(sha256)s, %(storage_url)s, %(storage_key)s)
RETURNING id;

-- name: set_file_job :none
-- Tie a file to its ingest job (same transaction as insert_file and the enqueue).
UPDATE app.files SET job_id = %(job_id)s WHERE id = %(file_id)s;

-- name: get_file :one
-- The file an ingest job reads.
SELECT id, owner_id, name, size, sha256, storage_url, storage_key FROM app.files WHERE id = %(file_id)s;

-- name: copy_log_entries :copy
-- Valid lines, a batch at a time (COPY: one round trip, no per-row statement overhead; binary:
-- the server parses no numbers or timestamps). Column types: LOG_ENTRY_TYPES in app/ingest.py.
COPY app.log_entries (file_id, job_id, line_no, ts, level, service, message, attributes) FROM STDIN (FORMAT BINARY);

-- name: copy_ingest_errors :copy
-- Invalid lines of the same batch.
COPY app.ingest_errors (file_id, job_id, line_no, reason, excerpt) FROM STDIN;

-- name: record_file_progress :none
-- The file's running counts, in the transaction of the batch they cover (so they always agree
-- with the rows in app.log_entries and app.ingest_errors).
UPDATE app.files
SET lines_total = %(lines_total)s, lines_valid = %(lines_valid)s, lines_invalid = %(lines_invalid)s,
    lines_blank = %(lines_blank)s, bytes_read = %(bytes_read)s
WHERE id = %(file_id)s;

-- name: job_status :one
-- GET /api/v1/jobs/{id}: the job, its file and counts when it is an ingest job, and otherwise
-- its latest reported progress (the newest progress event: a backward scan of events_job_idx).
SELECT j.id AS job_id, j.kind, j.status, j.owner_id, j.attempts, j.max_attempts, j.last_error,
       j.created_at, j.started_at, j.finished_at,
       f.id AS file_id, f.name AS file_name, f.size AS file_size, f.bytes_read,
       f.lines_total, f.lines_valid, f.lines_invalid, f.lines_blank,
       CASE WHEN f.id IS NULL THEN (
           SELECT (e.data ->> 'percent')::float8 FROM pgqueue.events AS e
           WHERE e.job_id = j.id AND e.type = 'progress' ORDER BY e.id DESC LIMIT 1
       ) END AS reported_percent
FROM pgqueue.jobs AS j
LEFT JOIN app.files AS f ON f.job_id = j.id
WHERE j.id = %(job_id)s;

-- name: list_files :many
-- GET /api/v1/files: the newest uploads (one owner's, or everyone's for NULL) with their counts
-- and their ingest job's status (NULL once the job was pruned). Served by files_owner_idx.
SELECT f.id, f.name, f.size, f.bytes_read, f.lines_total, f.lines_valid, f.lines_invalid, f.lines_blank,
       f.job_id, j.status AS job_status, f.owner_id, f.created_at, j.finished_at
FROM app.files AS f
LEFT JOIN pgqueue.jobs AS j ON j.id = f.job_id
WHERE (%(owner_id)s::text IS NULL OR f.owner_id = %(owner_id)s::text)
ORDER BY f.id DESC
LIMIT %(limit)s;
