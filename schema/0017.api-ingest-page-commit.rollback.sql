-- Back to a page commit that needs its own round trip (the code before 0017 never calls this).

DROP FUNCTION app.api_ingest_lease_lost(bigint);
