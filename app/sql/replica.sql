-- Statements of the read-replica router (app/replica.py), run on the replica.

-- name: replica_lag :one
-- How far behind the primary this server's data may be, in seconds. 0 on a server not in
-- recovery (a primary, a promoted standby) and on a standby that has replayed all the WAL it
-- received while its WAL receiver runs (the status is only visible to roles with
-- pg_read_all_stats: a running receiver whose status we may not see counts as streaming);
-- otherwise the age of the last transaction it replayed (an upper bound; infinite if none).
SELECT CASE
           WHEN NOT pg_is_in_recovery() THEN 0
           WHEN pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()
                AND EXISTS (SELECT FROM pg_stat_wal_receiver
                            WHERE status = 'streaming' OR (status IS NULL AND pid IS NOT NULL)) THEN 0
           ELSE coalesce(extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()), 'Infinity')
       END::float8 AS lag_seconds;

-- name: replica_alive :none
-- A pooled connection's liveness before a read uses it: a restarted or stopped standby leaves
-- dead connections in the pool, and a read that finds one falls back to the primary at once.
SELECT;
