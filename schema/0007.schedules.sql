-- Periodic jobs: schedules, and one row per fire time that became a job.
-- depends: 0006.worker-status

-- A schedule: a cron expression in a time zone and the job it enqueues at each fire time.
-- next_fire_at is the first fire time not handled yet, kept here (not in any worker's memory),
-- so restarting workers never delays a fire (river#791); revision changes with every write, and a
-- scheduler fires a schedule only at the revision it planned from.
CREATE TABLE pgqueue.schedules (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text        NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.:-]{1,100}$'),
    expression       text        NOT NULL CHECK (length(expression) BETWEEN 1 AND 200),
    timezone         text        NOT NULL DEFAULT 'UTC' CHECK (length(timezone) BETWEEN 1 AND 64),
    kind             text        NOT NULL CHECK (length(kind) BETWEEN 1 AND 100),
    queue            text        NOT NULL DEFAULT 'default' CHECK (length(queue) BETWEEN 1 AND 100),
    payload          jsonb       NOT NULL DEFAULT '{}',
    priority         smallint    NOT NULL DEFAULT 3 CHECK (priority BETWEEN 1 AND 5),
    max_attempts     integer     NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 1000),
    -- after fire times were missed: skip (the latest runs if at most catch_up_window late),
    -- latest (the latest runs, however late), all (every one of the last catch_up_window seconds)
    catch_up         text        NOT NULL DEFAULT 'skip' CHECK (catch_up IN ('skip', 'latest', 'all')),
    catch_up_window  double precision NOT NULL DEFAULT 60
                     CHECK (catch_up_window >= 1 AND catch_up_window <= 366 * 86400),
    paused           boolean     NOT NULL DEFAULT false,
    declared_in_code boolean     NOT NULL DEFAULT false,
    next_fire_at     timestamptz,
    last_fire_at     timestamptz,
    revision         bigint      NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- What every scheduler pass asks first: the due schedules, soonest first.
CREATE INDEX schedules_due_idx ON pgqueue.schedules (next_fire_at) WHERE NOT paused;

-- Each fire time becomes at most one job: the unique key is written in the same statement as the
-- job (pgqueue/sql/queries.sql fire_schedules), whichever worker gets there first. No foreign key to
-- the job: finished jobs are pruned, the record of the fire stays (and is pruned on its own).
CREATE TABLE pgqueue.schedule_fires (
    schedule_id bigint      NOT NULL REFERENCES pgqueue.schedules (id) ON DELETE CASCADE,
    fire_at     timestamptz NOT NULL,
    job_id      bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, fire_at)
);
CREATE INDEX schedule_fires_created_idx ON pgqueue.schedule_fires USING brin (created_at);

-- Every schedule with its state and its latest fire (and that job's status, while it is kept).
-- state: paused; overdue (due for more than a minute: is any worker running?); scheduled.
CREATE VIEW pgqueue.schedule_status AS
    SELECT s.name, s.expression, s.timezone, s.kind, s.queue, s.catch_up, s.catch_up_window, s.paused,
           s.declared_in_code, s.next_fire_at, s.last_fire_at, f.job_id AS last_job_id, j.status AS last_job_status,
           CASE WHEN s.paused THEN 'paused'
                WHEN s.next_fire_at IS NULL THEN 'never'
                WHEN s.next_fire_at < now() - interval '1 minute' THEN 'overdue'
                ELSE 'scheduled' END AS state,
           (SELECT count(*) FROM pgqueue.schedule_fires AS d
            WHERE d.schedule_id = s.id AND d.fire_at > now() - interval '1 day') AS fires_last_day
    FROM pgqueue.schedules AS s
    LEFT JOIN LATERAL (
        SELECT job_id FROM pgqueue.schedule_fires WHERE schedule_id = s.id ORDER BY fire_at DESC LIMIT 1
    ) AS f ON true
    LEFT JOIN pgqueue.jobs AS j ON j.id = f.job_id
    ORDER BY s.name;
