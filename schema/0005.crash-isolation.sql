-- A job that crashes its worker harms only itself (README, "One bad job").
-- crash_suspect: the job was running when its worker stopped heartbeating. pgqueue's worker
--   claims such a job only alone (nothing else running in that process), so if it crashes
--   the process again, it is the one to blame.
-- lease_charged: whether this lease, should it expire, counts as a failed attempt. True for a
--   job that ran alone and for claims of other callers (HTTP workers); false for the batch
--   claims of pgqueue's worker, where an expiry cannot tell which of the jobs crashed it.
-- depends: 0004.event-types

ALTER TABLE pgqueue.jobs
    ADD COLUMN crash_suspect boolean NOT NULL DEFAULT false,
    ADD COLUMN lease_charged boolean NOT NULL DEFAULT true;

-- Serves claim_suspect_job and suspects_waiting: tiny, it holds only crash suspects.
CREATE INDEX jobs_suspect_idx ON pgqueue.jobs (queue, priority DESC, run_at, id)
    WHERE crash_suspect AND status IN ('queued', 'failed');
