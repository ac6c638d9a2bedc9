-- Undo 0005.crash-isolation.
DROP INDEX pgqueue.jobs_suspect_idx;
ALTER TABLE pgqueue.jobs DROP COLUMN crash_suspect, DROP COLUMN lease_charged;
