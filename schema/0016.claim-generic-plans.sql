-- pgqueue.claim keeps the plans of its statements (README, "Where a drain's time goes").
-- A plpgsql statement goes through the plan cache like a prepared statement: after five runs it
-- keeps its generic plan only when that plan's estimated cost is near the custom plans' average.
-- The claim's `LIMIT max_jobs` is unknown to a generic plan, which then expects a tenth of the
-- table instead of max_jobs rows, so it always looked dearer, and every claim planned its main
-- statement (and the limited queues' lookup) again: 0.3-0.6 ms per call, 3-6 us per job at a
-- batch of 100 and ten times that at a batch of 10, measured with pg_stat_statements'
-- track_planning (206 plans for 204 claims in a drain of 20,000 jobs).
-- The generic plans are the custom plans' shape: every row count that matters (the queue names,
-- the free slots, the candidates) is a value inside the statement, not a parameter; the plans
-- are the same index scans (jobs_claim_idx for the candidates, jobs_pkey for the update, the
-- slot indexes under limits). The setting applies while the function runs, nothing else.
-- depends: 0015.wakeup-listener-locks

ALTER FUNCTION pgqueue.claim(text[], integer, text, double precision, boolean, boolean, boolean, boolean)
    SET plan_cache_mode = force_generic_plan;
