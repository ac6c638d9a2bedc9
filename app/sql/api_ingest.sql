-- The statements of API ingest (app/kinds/api_ingest.py, app/routes/syncs.py), each under a
-- `-- name: NAME :cardinality` header with %(param)s placeholders. Tables: schema/0010.api-ingest.sql.
-- {target} is a table name: filled in with psycopg.sql.Identifier("app", name) after the name
-- was checked against TARGET_NAME, never by string formatting.

-- name: lock_targets :none
-- Serialise target creation (two syncs creating one table at once would collide in pg_type).
SELECT pg_advisory_xact_lock(hashtext('app.api_ingest targets'));

-- name: create_target :none
-- A target table, shaped like app.api_events. The id is compared byte by byte (COLLATE "C"):
-- an id is an opaque key, and under the database's default collation (a libc locale such as
-- en_US.UTF-8 or C.UTF-8) every comparison of the primary key and of the page's DISTINCT ON
-- sort goes through strcoll and sorts without abbreviated keys. Targets created before keep
-- the default collation and work as before.
CREATE TABLE IF NOT EXISTS {target} (
    id          text        COLLATE "C" PRIMARY KEY,
    ts          timestamptz NOT NULL,
    data        jsonb       NOT NULL,
    source      text        NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now()
);

-- name: target_columns :many
-- The columns of an existing table, to refuse a target that is some other table of the app.
SELECT column_name, data_type FROM information_schema.columns
WHERE table_schema = 'app' AND table_name = %(target)s ORDER BY ordinal_position;

-- name: insert_sync :one
INSERT INTO app.api_syncs (source, target, config, owner_id)
VALUES (%(source)s, %(target)s, %(config)s, %(owner_id)s)
RETURNING id, created_at;

-- name: insert_sync_part :none
INSERT INTO app.api_sync_parts (sync_id, part, job_id) VALUES (%(sync_id)s, %(part)s, %(job_id)s);

-- name: create_stage :none
-- The page's staging table: per connection (created on its first page), emptied at every commit.
-- The id sorts byte by byte like a target's (create_target). copied_at is never read: its
-- volatile default makes COPY store the rows one by one instead of through its multi-insert
-- buffers, which create and drop a tuple slot per buffered row on every COPY (in PostgreSQL 15,
-- about a tenth of the server's CPU of a page here).
CREATE TEMPORARY TABLE IF NOT EXISTS api_ingest_stage (
    id text COLLATE "C", ts timestamptz, data jsonb, copied_at timestamptz DEFAULT clock_timestamp()
) ON COMMIT DELETE ROWS;

-- name: copy_stage :copy
-- A page's items, binary COPY (the stream is built by PageReader._rows in app/kinds/api_ingest.py).
COPY api_ingest_stage (id, ts, data) FROM STDIN (FORMAT BINARY);

-- name: insert_from_stage :none
-- What is new of the page: one row per id (an id repeated within the page keeps its first
-- copy by ctid, the order COPY wrote them), ids already stored are skipped; the rows new are
-- the statement's row count (no RETURNING: nothing to collect per row).
INSERT INTO {target} (id, ts, data, source)
SELECT DISTINCT ON (id) id, ts, data, %(source)s FROM api_ingest_stage ORDER BY id, ctid
ON CONFLICT (id) DO NOTHING;

-- name: copy_errors :copy
-- Items that cannot be stored, with the reason (text COPY into a staging-free insert below).
COPY api_ingest_error_stage (item_id, reason, data) FROM STDIN;

-- name: create_error_stage :none
CREATE TEMPORARY TABLE IF NOT EXISTS api_ingest_error_stage (item_id text, reason text, data jsonb) ON COMMIT DELETE ROWS;

-- name: insert_errors_from_stage :none
INSERT INTO app.api_ingest_errors (sync_id, part, item_id, reason, data)
SELECT %(sync_id)s, %(part)s, item_id, reason, data FROM api_ingest_error_stage
ON CONFLICT (sync_id, item_id) WHERE item_id IS NOT NULL DO NOTHING;

-- name: begin_page :none
-- A page's transaction (Committer in app/kinds/api_ingest.py: sent in one pipeline with lease_check).
BEGIN;

-- name: lease_check :one
-- The lease check of a page's transaction, pgqueue's lease_held (pgqueue/sql/queries.sql; a test
-- keeps the two in step): the job row locked FOR KEY SHARE until the page commits, so whoever
-- takes the job away (FOR UPDATE) waits for the page or skips the job. No row: not ours any more.
SELECT cancel_requested FROM pgqueue.jobs
WHERE id = %(job_id)s AND lease_token = %(token)s AND status = 'running'
FOR KEY SHARE;

-- name: record_page :one
-- In commit order, the end of a page's transaction: the checkpoint past the page (pgqueue's
-- save_checkpoint, same lease check and upsert) and the part's counts, in one statement sent
-- with the COMMIT in one pipeline. Without the lease it raises (app.api_ingest_lease_lost,
-- schema/0017), so the transaction aborts and the COMMIT behind it rolls the page back.
WITH held AS (
    SELECT id FROM pgqueue.jobs
    WHERE id = %(job_id)s AND lease_token = %(token)s AND status = 'running'
    FOR KEY SHARE
), saved AS (
    INSERT INTO pgqueue.checkpoints (job_id, state) SELECT id, %(state)s FROM held
    ON CONFLICT (job_id) DO UPDATE SET state = excluded.state, updated_at = now()
    RETURNING job_id
), counted AS (
    UPDATE app.api_sync_parts
    SET pages = pages + 1, events = events + %(events)s, inserted = inserted + %(inserted)s,
        invalid = invalid + %(invalid)s, retries = retries + %(retries)s,
        rate_limited = rate_limited + %(rate_limited)s, bytes = bytes + %(bytes)s, restarts = %(restarts)s,
        total = coalesce(%(total)s, total), last_page_at = now(),
        finished_at = CASE WHEN %(finished)s THEN now() END
    WHERE sync_id = %(sync_id)s AND part = %(part)s AND EXISTS (SELECT FROM held)
)
SELECT coalesce((SELECT job_id FROM saved), app.api_ingest_lease_lost(%(job_id)s));

-- name: commit_page :none
COMMIT;

-- name: source_metrics :many
-- /metrics: counts per source over every sync, and the last page's time.
SELECT s.source, sum(p.pages)::bigint, sum(p.events)::bigint, sum(p.inserted)::bigint,
       sum(p.retries)::bigint, sum(p.rate_limited)::bigint, sum(p.bytes)::bigint,
       extract(epoch FROM max(p.last_page_at))::float8
FROM app.api_syncs AS s JOIN app.api_sync_parts AS p ON p.sync_id = s.id
GROUP BY s.source ORDER BY s.source;

-- name: last_page_at :one
-- /readyz detail: when any connector last committed a page.
SELECT max(last_page_at) FROM app.api_sync_parts;

-- name: list_syncs :many
-- GET /api/v1/syncs and /api/v1/syncs/{id}: the newest syncs (one owner's, or everyone's for NULL;
-- only %(sync_id)s when given), each with the sums of its parts (status from their jobs).
SELECT s.id, s.source, s.target, s.owner_id, s.created_at,
       count(p.part) AS parts,
       coalesce(sum(p.pages), 0)::bigint AS pages, coalesce(sum(p.events), 0)::bigint AS events,
       coalesce(sum(p.inserted), 0)::bigint AS inserted, coalesce(sum(p.invalid), 0)::bigint AS invalid,
       coalesce(sum(p.retries), 0)::bigint AS retries, coalesce(sum(p.rate_limited), 0)::bigint AS rate_limited,
       coalesce(sum(p.bytes), 0)::bigint AS bytes, coalesce(sum(p.restarts), 0)::bigint AS restarts,
       max(p.total) AS total, max(p.last_page_at) AS last_page_at,
       array_agg(p.job_id ORDER BY p.part) AS job_ids,
       array_agg(coalesce(j.status, CASE WHEN p.finished_at IS NULL THEN 'unknown' ELSE 'succeeded' END)
                 ORDER BY p.part) AS statuses,
       array_agg(j.last_error ORDER BY p.part) AS errors
FROM (SELECT * FROM app.api_syncs
      WHERE (%(owner_id)s::text IS NULL OR owner_id = %(owner_id)s::text)
        AND (%(sync_id)s::bigint IS NULL OR id = %(sync_id)s::bigint)
      ORDER BY id DESC LIMIT %(limit)s) AS s
JOIN app.api_sync_parts AS p ON p.sync_id = s.id
LEFT JOIN pgqueue.jobs AS j ON j.id = p.job_id
GROUP BY s.id, s.source, s.target, s.owner_id, s.created_at
ORDER BY s.id DESC;
