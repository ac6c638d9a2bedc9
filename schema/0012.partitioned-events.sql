-- Events partitioned by day (README, "History that grows for years"): retention drops whole
-- partitions instead of DELETE, so pruning a day costs a DETACH and a DROP, not millions of dead
-- rows for VACUUM. Days are UTC days; a partition is named events_YYYYMMDD.
-- - id stays unique because one identity sequence serves every partition; the primary key must
--   hold the partition key, so it is (id, created_at). SSE replay (`id > last_event_id`, per job
--   on (job_id, id), globally on the primary key) reads each partition's index in a merge append.
-- - A DEFAULT partition catches a row whose day has no partition yet (no maintenance for longer
--   than the lead time): no insert ever fails for want of a partition. It is meant to stay empty:
--   every maintenance pass moves its rows into their day's partition, and /readyz and /metrics
--   report rows found there. The price: DETACH ... CONCURRENTLY is refused while a default
--   partition exists, so retention detaches under a short lock_timeout instead.
-- - The NOTIFY trigger stays a statement trigger with a transition table on the partitioned
--   table (PostgreSQL allows that; only row triggers with transition tables are refused on
--   partitions): one notification per statement, as before.
-- depends: 0011.idle-wakeups

ALTER TABLE pgqueue.events RENAME TO events_unpartitioned;
-- its identity sequence goes, so the new table's takes the name pgqueue.events_id_seq
ALTER TABLE pgqueue.events_unpartitioned ALTER COLUMN id DROP IDENTITY;
ALTER INDEX pgqueue.events_pkey RENAME TO events_unpartitioned_pkey;
ALTER INDEX pgqueue.events_job_idx RENAME TO events_unpartitioned_job_idx;
ALTER INDEX pgqueue.events_created_idx RENAME TO events_unpartitioned_created_idx;

-- same columns and CHECKs (events_type_check, with whatever types the migrations before added)
CREATE TABLE pgqueue.events (
    LIKE pgqueue.events_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS
) PARTITION BY RANGE (created_at);
ALTER TABLE pgqueue.events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
CREATE TABLE pgqueue.events_default PARTITION OF pgqueue.events DEFAULT;

-- Every partition with its range (NULLs for the default): for psql, maintenance and /metrics.
CREATE VIEW pgqueue.event_partitions AS
    SELECT c.relname AS name,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM $re$FROM \('([^']+)'\)$re$)::timestamptz AS range_from,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM $re$TO \('([^']+)'\)$re$)::timestamptz AS range_to,
           pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' AS is_default
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'pgqueue.events'::regclass
    ORDER BY range_from NULLS FIRST;

-- The partition of one UTC day, unless it exists: built as a plain table and then attached
-- (ATTACH takes SHARE UPDATE EXCLUSIVE on events, so inserts and reads go on meanwhile), with
-- the day's rows moved out of the default partition first. Returns its name, NULL if it existed.
CREATE FUNCTION pgqueue.create_event_partition(day date) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    part text := 'events_' || to_char(day, 'YYYYMMDD');
    low timestamptz := day::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    -- 1885827440: pgqueue's advisory lock for partition maintenance (0x70677170): the migration
    -- and a maintenance leader never race on the same CREATE TABLE
    PERFORM pg_advisory_xact_lock(1885827440);
    IF EXISTS (SELECT 1 FROM pgqueue.event_partitions p WHERE p.name = part)
       OR EXISTS (SELECT 1 FROM pgqueue.event_partitions p WHERE p.range_from < high AND p.range_to > low) THEN
        RETURN NULL;
    END IF;
    EXECUTE format('CREATE TABLE pgqueue.%I (LIKE pgqueue.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
    IF EXISTS (SELECT 1 FROM pgqueue.events_default WHERE created_at >= low AND created_at < high) THEN
        -- no new row of that day may arrive between the move and the attach (which checks)
        LOCK TABLE pgqueue.events_default IN SHARE ROW EXCLUSIVE MODE;
        EXECUTE format('WITH moved AS (DELETE FROM pgqueue.events_default WHERE created_at >= $1 AND created_at < $2 '
                       'RETURNING *) INSERT INTO pgqueue.%I SELECT * FROM moved', part) USING low, high;
    END IF;
    EXECUTE format('ALTER TABLE pgqueue.events ATTACH PARTITION pgqueue.%I FOR VALUES FROM (%L) TO (%L)',
                   part, low, high);
    RETURN part;
END;
$$;

-- Partitions from today (UTC) to days_ahead days ahead, and one for every day that has rows in
-- the default partition (which it empties that way). Run by every maintenance pass.
CREATE FUNCTION pgqueue.create_event_partitions(days_ahead integer DEFAULT 7) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    day date;
    made text;
BEGIN
    -- the days first: no DDL on a table while a query of ours still reads it
    FOREACH day IN ARRAY ARRAY(
        SELECT today + n FROM generate_series(0, days_ahead) AS n
        UNION
        SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM pgqueue.events_default
        ORDER BY 1) LOOP
        made := pgqueue.create_event_partition(day);
        IF made IS NOT NULL THEN
            RETURN NEXT made;
        END IF;
    END LOOP;
END;
$$;

-- Retention: detach and drop every partition whose whole range is older than older_than (a
-- partition goes once its newest possible row is past retention, so an event is kept between
-- keep_events_seconds and one day more). Not CONCURRENTLY: PostgreSQL refuses that while a
-- default partition exists. The ACCESS EXCLUSIVE lock it needs on events is taken with a
-- short lock_timeout, so a long reader makes this pass give up (the next one retries) instead
-- of queueing every insert behind it. Stray old rows of the default partition go too.
CREATE FUNCTION pgqueue.drop_event_partitions(older_than timestamptz, lock_timeout text DEFAULT '1s')
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    doomed text;
BEGIN
    PERFORM pg_advisory_xact_lock(1885827440);
    PERFORM set_config('lock_timeout', lock_timeout, true);
    FOREACH doomed IN ARRAY ARRAY(SELECT name FROM pgqueue.event_partitions
                                  WHERE NOT is_default AND range_to <= older_than ORDER BY range_from) LOOP
        BEGIN
            EXECUTE format('ALTER TABLE pgqueue.events DETACH PARTITION pgqueue.%I', doomed);
        EXCEPTION WHEN lock_not_available THEN
            RAISE WARNING 'pgqueue: events partition % not detached (lock_timeout %): next pass', doomed, lock_timeout;
            EXIT;
        END;
        EXECUTE format('DROP TABLE pgqueue.%I', doomed);
        RETURN NEXT doomed;
    END LOOP;
    DELETE FROM pgqueue.events_default WHERE created_at < older_than;
END;
$$;

-- Existing rows: a partition for each day they cover and the week ahead, then one copy.
DO $$
BEGIN
    PERFORM pgqueue.create_event_partition(day)
    FROM (SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date AS day FROM pgqueue.events_unpartitioned) AS days;
    PERFORM pgqueue.create_event_partitions(7);
    INSERT INTO pgqueue.events OVERRIDING SYSTEM VALUE SELECT * FROM pgqueue.events_unpartitioned;
    PERFORM setval(pg_get_serial_sequence('pgqueue.events', 'id'), greatest((SELECT max(id) FROM pgqueue.events), 1),
                   (SELECT max(id) FROM pgqueue.events) IS NOT NULL);
END;
$$;
DROP TABLE pgqueue.events_unpartitioned;

-- Indexes after the copy (one build per partition rather than row by row).
ALTER TABLE pgqueue.events ADD CONSTRAINT events_pkey PRIMARY KEY (id, created_at);
CREATE INDEX events_job_idx ON pgqueue.events (job_id, id);
CREATE INDEX events_created_idx ON pgqueue.events USING brin (created_at);

-- The NOTIFY trigger after the copy, too: the history is not announced again.
CREATE TRIGGER events_inserted_notify AFTER INSERT ON pgqueue.events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.notify_event();
