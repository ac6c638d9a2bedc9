-- Undo 0008.queues.
DROP VIEW pgqueue.queue_status;
DROP FUNCTION pgqueue.refilled_tokens;
DROP TABLE pgqueue.rate_buckets;
DROP TABLE pgqueue.slots;
DROP INDEX pgqueue.jobs_key_slot_idx;
DROP INDEX pgqueue.jobs_queue_slot_idx;
ALTER TABLE pgqueue.jobs DROP COLUMN concurrency_key, DROP COLUMN queue_slot, DROP COLUMN key_slot;
DROP TABLE pgqueue.queues;
