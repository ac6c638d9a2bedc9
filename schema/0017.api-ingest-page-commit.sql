-- API ingest commits a page in one round trip (app/kinds/api_ingest.py, Committer): the page's
-- checkpoint and counts (app/sql/api_ingest.sql, record_page) and its COMMIT go to the server
-- together, in one pipeline. So record_page must fail, not just write nothing, when the job's
-- lease is no longer this worker's: the error aborts the transaction and the COMMIT behind it
-- then rolls back. This is what it calls then (SQL itself has no way to raise an error).
-- depends: 0016.claim-generic-plans

CREATE FUNCTION app.api_ingest_lease_lost(job_id bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'lease on job % is no longer held by this worker', job_id
        USING ERRCODE = 'PQ409', HINT = 'the page is rolled back; the job''s new owner resumes at its checkpoint';
END
$$;
