-- API ingest (app/kinds/api_ingest.py): syncs, their parts (one job each), the default target
-- table, and the items whose timestamp could not be read. Everything in schema app.
-- depends: 0006.worker-status

CREATE SCHEMA IF NOT EXISTS app;

-- One row per sync (POST /api/v1/syncs, python -m app ingest-api): the validated source config.
-- A sync is split into parts (a range or a filter value each), one job per part.
CREATE TABLE app.api_syncs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      text        NOT NULL CHECK (length(source) BETWEEN 1 AND 100),
    target      text        NOT NULL CHECK (target ~ '^[a-z_][a-z0-9_]{0,62}$'),
    config      jsonb       NOT NULL,
    owner_id    text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_syncs_source_idx ON app.api_syncs (source, id DESC);

-- A part's running counts, written in the transaction of each page they cover (so they always
-- agree with the target table), and kept after the job is pruned.
CREATE TABLE app.api_sync_parts (
    sync_id       bigint      NOT NULL REFERENCES app.api_syncs (id) ON DELETE CASCADE,
    part          int         NOT NULL CHECK (part >= 0),
    job_id        bigint      NOT NULL,
    pages         bigint      NOT NULL DEFAULT 0,
    events        bigint      NOT NULL DEFAULT 0,  -- items received (duplicates included)
    inserted      bigint      NOT NULL DEFAULT 0,  -- rows new to the target
    invalid       bigint      NOT NULL DEFAULT 0,  -- items sent to app.api_ingest_errors
    retries       bigint      NOT NULL DEFAULT 0,
    rate_limited  bigint      NOT NULL DEFAULT 0,
    bytes         bigint      NOT NULL DEFAULT 0,
    restarts      int         NOT NULL DEFAULT 0,  -- cursor chains restarted after a refused cursor
    total         bigint,                          -- when the API announced one
    last_page_at  timestamptz,
    finished_at   timestamptz,
    PRIMARY KEY (sync_id, part)
);
CREATE UNIQUE INDEX api_sync_parts_job_idx ON app.api_sync_parts (job_id);
CREATE INDEX api_sync_parts_last_page_idx ON app.api_sync_parts (last_page_at DESC);

-- The default target. Other targets are created like it (app/sql/api_ingest.sql, create_target).
CREATE TABLE app.api_events (
    id          text        PRIMARY KEY,
    ts          timestamptz NOT NULL,
    data        jsonb       NOT NULL,
    source      text        NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now()
);

-- Items that could not be stored (no id, a timestamp that does not parse), with the reason.
CREATE TABLE app.api_ingest_errors (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sync_id     bigint      NOT NULL,
    part        int         NOT NULL,
    item_id     text,
    reason      text        NOT NULL,
    data        jsonb       NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_ingest_errors_sync_idx ON app.api_ingest_errors (sync_id, id);
-- a resumed page writes its errors again: one row per (sync, item) is enough
CREATE UNIQUE INDEX api_ingest_errors_item_idx ON app.api_ingest_errors (sync_id, item_id) WHERE item_id IS NOT NULL;
