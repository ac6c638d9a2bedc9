-- depends: 0006.worker-status
-- Flow control per queue (README, "Queues: pause, concurrency and rate limits").
--
-- pgqueue.queues: one row per queue that has been paused or given a limit (a queue without a
-- row runs unlimited). The limits are enforced inside claim_jobs / claim_suspect_job, never by
-- counting first and claiming after:
-- - concurrency: each running job of a limited queue (and of a limited concurrency key) holds a
--   numbered slot in 0..N-1 (jobs.queue_slot / jobs.key_slot) under a partial unique index on
--   running jobs, so no two running jobs can ever share a slot. A slot is free again as soon as
--   its job leaves 'running' (complete, fail, cancel, release, rescue: nothing to clear).
--   pgqueue.slots serialises the claimers: a claim upserts the row of every slot it takes and
--   stamps it with its transaction id; a slot stamped by a transaction that this claim's
--   snapshot cannot see yet counts as taken (its job may be running already).
-- - rate: a token bucket per queue (key '') and per key in pgqueue.rate_buckets, refilled
--   lazily from now() and taken in the claim's statement under the bucket row's lock.
-- Per-key limits are one default for every key of the queue (key_concurrency_limit,
-- key_rate_limit): a key is a tenant, a customer, an API account, and they are not listed ahead.

CREATE TABLE pgqueue.queues (
    name                  text        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.:-]{1,100}$'),
    paused                boolean     NOT NULL DEFAULT false,
    concurrency_limit     integer     CHECK (concurrency_limit BETWEEN 1 AND 100000),
    rate_limit            integer     CHECK (rate_limit BETWEEN 1 AND 1000000000),
    rate_period           double precision CHECK (rate_period BETWEEN 0.001 AND 31622400),
    key_concurrency_limit integer     CHECK (key_concurrency_limit BETWEEN 1 AND 100000),
    key_rate_limit        integer     CHECK (key_rate_limit BETWEEN 1 AND 1000000000),
    key_rate_period       double precision CHECK (key_rate_period BETWEEN 0.001 AND 31622400),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT queues_rate_has_period CHECK ((rate_limit IS NULL) = (rate_period IS NULL)),
    CONSTRAINT queues_key_rate_has_period CHECK ((key_rate_limit IS NULL) = (key_rate_period IS NULL))
);

ALTER TABLE pgqueue.jobs
    ADD COLUMN concurrency_key text CHECK (length(concurrency_key) BETWEEN 1 AND 500),
    ADD COLUMN queue_slot integer,
    ADD COLUMN key_slot integer;

-- The capacity slots: at most one running job per (queue, slot) and per (queue, key, slot).
-- Also what claim_jobs reads to see which slots are in use and which keys are full.
CREATE UNIQUE INDEX jobs_queue_slot_idx ON pgqueue.jobs (queue, queue_slot)
    WHERE status = 'running' AND queue_slot IS NOT NULL;
CREATE UNIQUE INDEX jobs_key_slot_idx ON pgqueue.jobs (queue, concurrency_key, key_slot)
    WHERE status = 'running' AND key_slot IS NOT NULL;

-- The last claim of each slot (key '' is the queue's own slots). A row only says which
-- transaction took the slot last; whether it is still taken is the jobs index above.
CREATE TABLE pgqueue.slots (
    queue       text    NOT NULL,
    key         text    NOT NULL,
    slot        integer NOT NULL,
    claimed_xid xid8    NOT NULL,
    PRIMARY KEY (queue, key, slot)
) WITH (fillfactor = 50);

-- Token buckets (key '' is the queue's own bucket): `tokens` as of `refilled_at`; `granted` is
-- what the last claim took (returned to the claim statement, which cannot see old values).
CREATE TABLE pgqueue.rate_buckets (
    queue       text             NOT NULL,
    key         text             NOT NULL,
    tokens      double precision NOT NULL,
    refilled_at timestamptz      NOT NULL,
    granted     integer          NOT NULL DEFAULT 0,
    capacity    integer          NOT NULL,
    period      double precision NOT NULL,
    PRIMARY KEY (queue, key)
) WITH (fillfactor = 50);

-- A bucket's tokens at `at`: `capacity` tokens at most, `capacity` more per `period` seconds
-- (a clock that went backwards adds nothing).
CREATE FUNCTION pgqueue.refilled_tokens(tokens double precision, refilled_at timestamptz, at timestamptz,
                                        capacity integer, period double precision)
RETURNS double precision LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN least(capacity::double precision,
             tokens + greatest(0, extract(epoch FROM at - refilled_at)::double precision) * capacity / period);

-- Every queue that has jobs or a row, with its state, limits and job counts (psql, CLI, REST).
CREATE VIEW pgqueue.queue_status AS
    SELECT n.name,
           CASE WHEN coalesce(q.paused, false) THEN 'paused' ELSE 'active' END AS state,
           coalesce(q.paused, false) AS paused,
           q.concurrency_limit, q.rate_limit, q.rate_period,
           q.key_concurrency_limit, q.key_rate_limit, q.key_rate_period,
           coalesce(c.queued, 0) AS queued,
           coalesce(c.scheduled, 0) AS scheduled,
           coalesce(c.running, 0) AS running,
           coalesce(c.running_keys, 0) AS running_keys,
           q.created_at, q.updated_at
    FROM (SELECT name FROM pgqueue.queues UNION SELECT DISTINCT queue FROM pgqueue.jobs) AS n
    LEFT JOIN pgqueue.queues AS q ON q.name = n.name
    LEFT JOIN (
        SELECT queue,
               count(*) FILTER (WHERE status IN ('queued', 'failed') AND run_at <= now()) AS queued,
               count(*) FILTER (WHERE status IN ('queued', 'failed') AND run_at > now()) AS scheduled,
               count(*) FILTER (WHERE status = 'running') AS running,
               count(DISTINCT concurrency_key) FILTER (WHERE status = 'running') AS running_keys
        FROM pgqueue.jobs GROUP BY queue
    ) AS c ON c.queue = n.name
    ORDER BY n.name;
