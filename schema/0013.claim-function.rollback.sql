-- Back to 0008's slot rows (the claim statements of that version recreate what they need).
DROP FUNCTION pgqueue.claim(text[], integer, text, double precision, boolean, boolean, boolean, boolean);
DROP FUNCTION pgqueue.free_slots(integer[], integer, bigint);
ALTER TABLE pgqueue.rate_buckets ADD COLUMN granted integer NOT NULL DEFAULT 0;
CREATE TABLE pgqueue.slots (
    queue       text    NOT NULL,
    key         text    NOT NULL,
    slot        integer NOT NULL,
    claimed_xid xid8    NOT NULL,
    PRIMARY KEY (queue, key, slot)
) WITH (fillfactor = 50);
