-- Undo 0006.worker-status.
DROP VIEW pgqueue.worker_status;
ALTER TABLE pgqueue.workers DROP COLUMN heartbeat_seconds;
