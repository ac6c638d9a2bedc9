-- Undo 0002.app: the task notification triggers and the app schema.
DROP TRIGGER IF EXISTS task_updated_notify ON pgqueue.jobs;
DROP TRIGGER IF EXISTS task_created_notify ON pgqueue.jobs;
DROP SCHEMA IF EXISTS app CASCADE;
