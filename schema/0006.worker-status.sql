-- Workers killed without unregistering show as gone within a few of their own heartbeats: each
-- row records its heartbeat interval, and pgqueue.worker_status computes `alive` from it.
-- depends: 0004.event-types

ALTER TABLE pgqueue.workers
    ADD COLUMN heartbeat_seconds double precision NOT NULL DEFAULT 5 CHECK (heartbeat_seconds > 0);

-- alive: heard from within 3 of its heartbeats (at least 2 s, so a slow commit is no death).
CREATE VIEW pgqueue.worker_status AS
    SELECT id, hostname, pid, queues, concurrency, started_at, heartbeat_at, heartbeat_seconds,
           now() - heartbeat_at AS silent_for,
           heartbeat_at > now() - make_interval(secs => greatest(3 * heartbeat_seconds, 2)) AS alive
    FROM pgqueue.workers
    ORDER BY started_at, id;
