-- Undo 0010.api-ingest: the target tables syncs created, then the migration's own tables.
DO $$
DECLARE name text;
BEGIN
    FOR name IN SELECT DISTINCT target FROM app.api_syncs WHERE target <> 'api_events' LOOP
        EXECUTE format('DROP TABLE IF EXISTS app.%I', name);
    END LOOP;
END $$;
DROP TABLE IF EXISTS app.api_ingest_errors;
DROP TABLE IF EXISTS app.api_events;
DROP TABLE IF EXISTS app.api_sync_parts;
DROP TABLE IF EXISTS app.api_syncs;
