-- Undo 0012.partitioned-events: one plain events table again, with every row kept (ids too).
ALTER TABLE pgqueue.events RENAME TO events_partitioned;
ALTER TABLE pgqueue.events_partitioned ALTER COLUMN id DROP IDENTITY;
ALTER TABLE pgqueue.events_partitioned RENAME CONSTRAINT events_pkey TO events_partitioned_pkey;
ALTER INDEX pgqueue.events_job_idx RENAME TO events_partitioned_job_idx;
ALTER INDEX pgqueue.events_created_idx RENAME TO events_partitioned_created_idx;

CREATE TABLE pgqueue.events (
    LIKE pgqueue.events_partitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS
);
ALTER TABLE pgqueue.events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
INSERT INTO pgqueue.events OVERRIDING SYSTEM VALUE SELECT * FROM pgqueue.events_partitioned;
DO $$
BEGIN
    PERFORM setval(pg_get_serial_sequence('pgqueue.events', 'id'), greatest((SELECT max(id) FROM pgqueue.events), 1),
                   (SELECT max(id) FROM pgqueue.events) IS NOT NULL);
END;
$$;

DROP VIEW pgqueue.event_partitions CASCADE;
DROP FUNCTION pgqueue.drop_event_partitions(timestamptz, text);
DROP FUNCTION pgqueue.create_event_partitions(integer);
DROP FUNCTION pgqueue.create_event_partition(date);
DROP TABLE pgqueue.events_partitioned;

ALTER TABLE pgqueue.events ADD CONSTRAINT events_pkey PRIMARY KEY (id);
CREATE INDEX events_job_idx ON pgqueue.events (job_id, id);
CREATE INDEX events_created_idx ON pgqueue.events USING brin (created_at);
CREATE TRIGGER events_inserted_notify AFTER INSERT ON pgqueue.events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.notify_event();
