-- A claim keeps the plans of its statements (README, "Benchmarks": where a drain's time goes).
-- A plpgsql statement goes through the plan cache like a prepared statement: after five runs it
-- keeps its generic plan only when that plan's estimated cost is near the custom plans' average.
-- The claim's `LIMIT max_jobs` is unknown to a generic plan, which then expects a tenth of the
-- table instead of max_jobs rows, so it always looked dearer, and every claim planned its main
-- statement (and the limited queues' lookup) again: 0.3-0.6 ms per call, 3-6 us per job at a
-- batch of 100 and ten times that at a batch of 10 (pg_stat_statements with track_planning: 206
-- plans for 204 claims in a drain of 20,000 jobs).
--
-- pgqueue.claim_runnable is pgqueue.claim for runnable jobs (suspects_only false: every claim but
-- a crash suspect's) with plan_cache_mode = force_generic_plan while it runs. The generic plans
-- are the custom plans' shape there: what decides the row counts (the queue names, the free
-- slots, the candidates) is computed inside the statements, not passed in; they are the same
-- index scans (jobs_claim_idx for the candidates, jobs_pkey for the update, the slot indexes
-- under limits). A crash suspect's claim keeps calling pgqueue.claim itself with custom plans:
-- only a plan made for suspects_only = true can use the small partial jobs_suspect_idx.
-- depends: 0015.wakeup-listener-locks

CREATE FUNCTION pgqueue.claim_runnable(queues text[], max_jobs integer, worker_id text,
                                       lease_seconds double precision, charged boolean,
                                       include_suspects boolean, record_started boolean)
RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN pgqueue.claim(queues, max_jobs, worker_id, lease_seconds, charged, include_suspects, false,
                         record_started);
END
$$;
