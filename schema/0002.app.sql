-- The web app's domain tables (schema `app`): users and their API tokens, and the
-- task_created / task_updated notifications for jobs of kind 'task'.
-- depends: 0001.engine

CREATE SCHEMA IF NOT EXISTS app;

CREATE TABLE app.users (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text        NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    is_admin   boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Only the SHA-256 of a token is stored: a leaked table does not leak usable tokens, and a
-- token of 32 random bytes needs no slow password hash. A user may hold several tokens.
CREATE TABLE app.api_tokens (
    token_hash bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id    bigint      NOT NULL REFERENCES app.users (id) ON DELETE CASCADE,
    label      text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_tokens_user_idx ON app.api_tokens (user_id);

-- Tasks are jobs of kind 'task' (owner_id = the user's id). Whoever changes such a job
-- (the API, a worker, psql), listeners of these channels hear {id, user_id, status}:
--   LISTEN task_created; LISTEN task_updated;
CREATE FUNCTION app.task_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        CASE TG_OP WHEN 'INSERT' THEN 'task_created' ELSE 'task_updated' END,
        json_build_object(
            'id', NEW.id,
            'user_id', CASE WHEN NEW.owner_id ~ '^[0-9]{1,18}$' THEN to_jsonb(NEW.owner_id::bigint)
                            ELSE to_jsonb(NEW.owner_id) END,
            'status', NEW.status
        )::text
    );
    RETURN NULL;
END;
$$;

-- Row triggers with a WHEN clause: for every other kind the function is not even called.
CREATE TRIGGER task_created_notify AFTER INSERT ON pgqueue.jobs
    FOR EACH ROW WHEN (NEW.kind = 'task')
    EXECUTE FUNCTION app.task_notify();

CREATE TRIGGER task_updated_notify AFTER UPDATE OF status ON pgqueue.jobs
    FOR EACH ROW WHEN (NEW.kind = 'task' AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION app.task_notify();
