-- Undo 0004.event-types: back to the pattern check of 0001.
ALTER TABLE pgqueue.events DROP CONSTRAINT events_type_check;
ALTER TABLE pgqueue.events ADD CONSTRAINT events_type_check CHECK (type ~ '^[a-z_]{1,40}$');
