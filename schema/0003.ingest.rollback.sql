-- Undo 0003.ingest: the ingestion tables only (schema app holds other migrations' tables too).
DROP TRIGGER IF EXISTS files_deleted_entries ON app.files;
DROP FUNCTION IF EXISTS app.delete_file_entries();
DROP TABLE IF EXISTS app.ingest_errors;
DROP TABLE IF EXISTS app.log_entries;
DROP TABLE IF EXISTS app.files;
