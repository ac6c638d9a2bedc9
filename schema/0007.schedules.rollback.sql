-- Undo 0007.schedules.
DROP VIEW pgqueue.schedule_status;
DROP TABLE pgqueue.schedule_fires;
DROP TABLE pgqueue.schedules;
