-- One claim for every case (README, "Queues: pause, concurrency and rate limits"):
-- pgqueue.claim() replaces the three claim statements that repeated each other (the plain one,
-- the limited one, the crash suspect's), and makes a claim under a limit cost about what a
-- plain claim costs.
--
-- Limited queues: the claims of one limited queue take turns, under a transaction-level
-- advisory lock per queue (class 1885827448, next to the wake-up class 1885827447), taken in
-- queue-name order. In READ COMMITTED every statement of a volatile function takes a new
-- snapshot, and a transaction is visible before its locks are released: so each statement
-- after the lock sees every claim before it committed, and nobody claims from the queue
-- meanwhile. The running jobs' slots are then known exactly, and the new jobs take free slots
-- in 0..N-1 under the partial unique indexes of 0008 (jobs_queue_slot_idx, jobs_key_slot_idx),
-- which stay the guarantee that no two running jobs ever share a slot. A slot no longer needs a
-- row of its own: pgqueue.slots goes, and with it the upsert per claimed job that doubled the
-- cost of a limited claim. Token buckets are read and written under the same lock.
-- depends: 0012.partitioned-events

DROP TABLE pgqueue.slots;
ALTER TABLE pgqueue.rate_buckets DROP COLUMN granted;

-- The n free slots of a limit (the lowest numbers no running job holds). generate_series sits
-- in a select list, where it streams and stops at the LIMIT (in FROM it would build all of a
-- limit of 100,000 first).
CREATE FUNCTION pgqueue.free_slots(used integer[], n integer, wanted bigint)
RETURNS integer[] LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY(SELECT g.slot FROM (SELECT generate_series(0, n - 1) AS slot) AS g
             WHERE g.slot <> ALL (coalesce(used, '{}')) LIMIT wanted);

-- Claim up to max_jobs runnable jobs of the given queues for worker_id, best priority then
-- oldest first within each queue; returns them as one JSON array (NULL when none), which the
-- worker decodes in one call.
-- - paused queues are not scanned; unlimited queues are claimed first, in one statement;
-- - suspects_only: crash suspects alone (a worker that runs one runs nothing beside it);
--   include_suspects false: no suspects (pgqueue's worker runs them apart);
-- - charged: whether an expired lease of this claim counts as an attempt (README "One bad job");
-- - record_started: write each job's 'started' event here (pgqueue's worker writes its own,
--   batched);
-- - a job of a limited queue is claimed only with a free slot of the queue and of its key, and
--   a token of the queue's and of its key's bucket. One that gets none is skipped, never
--   failed, and a full key is passed over so that it cannot hold back the others.
-- The locking SELECTs are MATERIALIZED CTEs (a subquery may run more than once and claim more
-- than asked) and the UPDATEs find the locked rows by primary key (`= ANY(ARRAY(...))`: joined
-- to the CTE instead, the planner may scan the whole table), one LATERAL index scan per queue
-- (`queue = ANY(...)` would defeat the ordered scan of jobs_claim_idx).
CREATE FUNCTION pgqueue.claim(queues text[], max_jobs integer, worker_id text, lease_seconds double precision,
                              charged boolean, include_suspects boolean, suspects_only boolean,
                              record_started boolean)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    parts text[] := '{}';
    part text;
    claimed integer := 0;
    got integer;
    q pgqueue.queues;
    room integer;
    queue_free integer[];
    bucket_tokens double precision;
    full_keys text[];
BEGIN
    -- unlimited queues (no pgqueue.queues row, or one without limits, not paused)
    WITH plain AS MATERIALIZED (
        SELECT u.name FROM (SELECT DISTINCT name FROM unnest(queues) AS d(name)) AS u
        LEFT JOIN pgqueue.queues AS s ON s.name = u.name
        WHERE s.name IS NULL
           OR (NOT s.paused AND s.concurrency_limit IS NULL AND s.rate_limit IS NULL
               AND s.key_concurrency_limit IS NULL AND s.key_rate_limit IS NULL)
    ), candidates AS MATERIALIZED (
        SELECT c.id FROM plain AS p
        CROSS JOIN LATERAL (
            SELECT j.id, j.priority, j.run_at FROM pgqueue.jobs AS j
            WHERE j.queue = p.name AND j.status IN ('queued', 'failed') AND j.run_at <= now()
              AND (include_suspects OR NOT j.crash_suspect) AND (NOT suspects_only OR j.crash_suspect)
            ORDER BY j.priority DESC, j.run_at, j.id
            LIMIT max_jobs
            FOR UPDATE SKIP LOCKED
        ) AS c
        ORDER BY c.priority DESC, c.run_at, c.id
        LIMIT max_jobs
    ), done AS (
        UPDATE pgqueue.jobs AS j
        SET status = 'running', attempts = j.attempts + 1, lease_owner = worker_id,
            lease_token = gen_random_uuid(), lease_expires_at = now() + make_interval(secs => lease_seconds),
            lease_charged = charged, started_at = now(), updated_at = now(),
            queue_slot = NULL, key_slot = NULL  -- a slot left from a run under a limit lifted since
        WHERE j.id = ANY(ARRAY(SELECT id FROM candidates))
        RETURNING j.*
    )
    SELECT count(*), json_agg(done ORDER BY priority DESC, run_at, id)::text INTO got, part FROM done;
    IF got > 0 THEN
        parts := parts || part;
        claimed := claimed + got;
    END IF;

    -- limited queues, one at a time, in name order (so two claims never wait for each other in a cycle)
    FOR q IN
        SELECT s.* FROM pgqueue.queues AS s
        WHERE s.name = ANY(queues) AND NOT s.paused
          AND (s.concurrency_limit IS NOT NULL OR s.rate_limit IS NOT NULL
               OR s.key_concurrency_limit IS NOT NULL OR s.key_rate_limit IS NOT NULL)
        ORDER BY s.name
    LOOP
        EXIT WHEN claimed >= max_jobs;
        PERFORM pg_advisory_xact_lock(1885827448, hashtext(q.name));
        -- from here on every statement sees every claim of this queue that came before
        room := max_jobs - claimed;
        queue_free := NULL;
        IF q.concurrency_limit IS NOT NULL THEN
            queue_free := pgqueue.free_slots(ARRAY(
                SELECT r.queue_slot FROM pgqueue.jobs AS r
                WHERE r.queue = q.name AND r.status = 'running' AND r.queue_slot IS NOT NULL), q.concurrency_limit, room);
            room := least(room, cardinality(queue_free));
        END IF;
        IF q.rate_limit IS NOT NULL THEN
            SELECT floor(pgqueue.refilled_tokens(b.tokens, b.refilled_at, now(), q.rate_limit, q.rate_period))
            INTO bucket_tokens FROM pgqueue.rate_buckets AS b WHERE b.queue = q.name AND b.key = '';
            room := least(room, coalesce(bucket_tokens, q.rate_limit)::integer);  -- no row: a full bucket
        END IF;
        CONTINUE WHEN room <= 0;
        full_keys := NULL;
        IF q.key_concurrency_limit IS NOT NULL OR q.key_rate_limit IS NOT NULL THEN
            -- keys that can start nothing now: passed over by the scan, so they hold back no other key
            full_keys := ARRAY(
                SELECT r.concurrency_key FROM pgqueue.jobs AS r
                WHERE q.key_concurrency_limit IS NOT NULL
                  AND r.queue = q.name AND r.status = 'running' AND r.key_slot IS NOT NULL
                GROUP BY r.concurrency_key HAVING count(*) >= q.key_concurrency_limit
                UNION ALL
                SELECT b.key FROM pgqueue.rate_buckets AS b
                WHERE q.key_rate_limit IS NOT NULL AND b.queue = q.name AND b.key <> ''
                  AND pgqueue.refilled_tokens(b.tokens, b.refilled_at, now(), q.key_rate_limit, q.key_rate_period) < 1);
        END IF;

        WITH candidates AS MATERIALIZED (
            SELECT j.id, j.concurrency_key AS key, j.priority, j.run_at FROM pgqueue.jobs AS j
            WHERE j.queue = q.name AND j.status IN ('queued', 'failed') AND j.run_at <= now()
              AND (include_suspects OR NOT j.crash_suspect) AND (NOT suspects_only OR j.crash_suspect)
              AND (full_keys IS NULL OR j.concurrency_key IS NULL OR j.concurrency_key <> ALL (full_keys))
            ORDER BY j.priority DESC, j.run_at, j.id
            LIMIT room
            FOR UPDATE SKIP LOCKED
        ), ranked AS (
            SELECT c.*, row_number() OVER (PARTITION BY c.key ORDER BY c.priority DESC, c.run_at, c.id) AS key_rank
            FROM candidates AS c
        ), keys AS (
            -- per limited key: its free slots and its tokens (NULL: that limit is not set)
            SELECT k.key,
                   CASE WHEN q.key_concurrency_limit IS NOT NULL THEN pgqueue.free_slots(ARRAY(
                       SELECT r.key_slot FROM pgqueue.jobs AS r
                       WHERE r.queue = q.name AND r.concurrency_key = k.key AND r.status = 'running'
                         AND r.key_slot IS NOT NULL), q.key_concurrency_limit, k.wanted) END AS free,
                   CASE WHEN q.key_rate_limit IS NOT NULL THEN coalesce((
                       SELECT floor(pgqueue.refilled_tokens(b.tokens, b.refilled_at, now(), q.key_rate_limit, q.key_rate_period))
                       FROM pgqueue.rate_buckets AS b WHERE b.queue = q.name AND b.key = k.key), q.key_rate_limit) END AS tokens
            FROM (SELECT c.key, count(*) AS wanted FROM candidates AS c WHERE c.key IS NOT NULL GROUP BY c.key) AS k
            WHERE q.key_concurrency_limit IS NOT NULL OR q.key_rate_limit IS NOT NULL
        ), admitted AS MATERIALIZED (
            -- the n-th candidate of a key takes the key's n-th free slot; those beyond its free
            -- slots or its tokens are skipped; then the queue's free slots in claim order
            SELECT a.id, a.key_slot, queue_free[row_number() OVER (ORDER BY a.priority DESC, a.run_at, a.id)] AS queue_slot
            FROM (SELECT r.id, r.priority, r.run_at, k.free[r.key_rank] AS key_slot
                  FROM ranked AS r LEFT JOIN keys AS k ON k.key = r.key
                  WHERE k.key IS NULL
                     OR ((k.free IS NULL OR r.key_rank <= cardinality(k.free))
                         AND (k.tokens IS NULL OR r.key_rank <= k.tokens))) AS a
        ), done AS (
            UPDATE pgqueue.jobs AS j
            SET status = 'running', attempts = j.attempts + 1, lease_owner = worker_id,
                lease_token = gen_random_uuid(), lease_expires_at = now() + make_interval(secs => lease_seconds),
                lease_charged = charged, started_at = now(), updated_at = now(),
                queue_slot = a.queue_slot, key_slot = a.key_slot
            FROM admitted AS a
            WHERE j.id = ANY(ARRAY(SELECT id FROM admitted)) AND j.id = a.id
            RETURNING j.*
        ), tokens AS (
            -- the tokens taken, per key and per queue (key ''), in one upsert (a bucket without a
            -- row was full); under the queue's lock nobody else writes these buckets meanwhile
            INSERT INTO pgqueue.rate_buckets AS b (queue, key, tokens, refilled_at, capacity, period)
            SELECT q.name, t.key, t.capacity - t.taken, now(), t.capacity, t.period
            FROM (SELECT d.concurrency_key AS key, count(*) AS taken, q.key_rate_limit AS capacity,
                         q.key_rate_period AS period
                  FROM done AS d WHERE q.key_rate_limit IS NOT NULL AND d.concurrency_key IS NOT NULL
                  GROUP BY d.concurrency_key
                  UNION ALL
                  SELECT '', count(*), q.rate_limit, q.rate_period
                  FROM done WHERE q.rate_limit IS NOT NULL HAVING count(*) > 0) AS t
            ORDER BY t.key
            ON CONFLICT (queue, key) DO UPDATE SET
                tokens = pgqueue.refilled_tokens(b.tokens, b.refilled_at, EXCLUDED.refilled_at, EXCLUDED.capacity, EXCLUDED.period)
                         - (EXCLUDED.capacity - EXCLUDED.tokens),
                refilled_at = greatest(b.refilled_at, EXCLUDED.refilled_at), capacity = EXCLUDED.capacity,
                period = EXCLUDED.period
        )
        SELECT count(*), json_agg(done ORDER BY priority DESC, run_at, id)::text INTO got, part FROM done;
        IF got > 0 THEN
            parts := parts || part;
            claimed := claimed + got;
        END IF;
    END LOOP;

    IF claimed = 0 THEN
        RETURN NULL;
    END IF;
    IF record_started THEN
        INSERT INTO pgqueue.events (job_id, type, data)
        SELECT (e->>'id')::bigint, 'started', jsonb_build_object('attempt', (e->>'attempts')::int, 'worker_id', worker_id)
        FROM unnest(parts) AS p(part), json_array_elements(p.part::json) AS e;
    END IF;
    IF cardinality(parts) = 1 THEN
        RETURN parts[1];
    END IF;
    -- several JSON arrays into one (each is `[...]`, none is empty)
    RETURN '[' || array_to_string(ARRAY(SELECT substr(p, 2, length(p) - 2) FROM unnest(parts) AS p), ',') || ']';
END
$$;
