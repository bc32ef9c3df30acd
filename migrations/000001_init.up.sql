-- Runtime Manager's durable state. Runs in schema rtmanager (the session's search_path).

CREATE TABLE runtime_records (
    game_id              text PRIMARY KEY CHECK (game_id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'),
    status               text NOT NULL CHECK (status IN ('starting', 'running', 'stopping', 'stopped', 'exited', 'failed', 'removed')),
    desired_state        text NOT NULL CHECK (desired_state IN ('running', 'stopped', 'removed')),
    desired_image_ref    text NOT NULL DEFAULT '',
    current_image_ref    text NOT NULL DEFAULT '',
    current_container_id text NOT NULL DEFAULT '',
    engine_endpoint      text NOT NULL DEFAULT '',
    state_dir            text NOT NULL DEFAULT '',
    last_error_code      text NOT NULL DEFAULT '',
    last_error_message   text NOT NULL DEFAULT '',
    exit_code            integer,
    -- generation is bumped by every request that changes what the game should be;
    -- observed_generation is the generation the reconciler last settled (converged or failed).
    generation           bigint NOT NULL DEFAULT 1,
    observed_generation  bigint NOT NULL DEFAULT 0,
    -- container_generation is the generation a fresh container is wanted for (bumped by restart);
    -- the container carries the one it was created for in its com.galaxy.generation label.
    container_generation bigint NOT NULL DEFAULT 0,
    -- exit_reported_container is the container whose exit was already published as a health event.
    exit_reported_container text NOT NULL DEFAULT '',
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX runtime_records_status_idx ON runtime_records (status, game_id);

CREATE TABLE operation_log (
    id            bigserial PRIMARY KEY,
    game_id       text NOT NULL,
    op_kind       text NOT NULL CHECK (op_kind IN ('start', 'stop', 'restart', 'patch', 'cleanup_container',
                                                   'reconcile_adopt', 'reconcile_dispose', 'reconcile_observed_exited')),
    op_source     text NOT NULL CHECK (op_source IN ('start_jobs', 'stop_jobs', 'admin_rest', 'gm_rest', 'reconciler', 'docker_events')),
    outcome       text NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    error_code    text NOT NULL DEFAULT '',
    error_message text NOT NULL DEFAULT '',
    request_id    text NOT NULL DEFAULT '',
    old_image_ref text NOT NULL DEFAULT '',
    new_image_ref text NOT NULL DEFAULT '',
    container_id  text NOT NULL DEFAULT '',
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL
);

CREATE INDEX operation_log_game_idx ON operation_log (game_id, started_at DESC, id DESC);

CREATE TABLE health_snapshots (
    game_id                    text PRIMARY KEY,
    status                     text NOT NULL CHECK (status IN ('healthy', 'unhealthy', 'unknown')),
    last_event_type            text NOT NULL DEFAULT '',
    consecutive_probe_failures integer NOT NULL DEFAULT 0,
    last_probe_at              timestamptz,
    exit_code                  integer,
    oom_killed                 boolean NOT NULL DEFAULT false,
    docker_state               text NOT NULL DEFAULT '',
    updated_at                 timestamptz NOT NULL DEFAULT now()
);

-- Every request (a start or stop job, a REST mutation) is kept until answered, keyed so that a
-- request delivered twice is recognised: (channel, request_id), channel being the job stream
-- or 'rest'.
CREATE TABLE requests (
    channel       text NOT NULL,
    request_id    text NOT NULL,
    game_id       text NOT NULL,
    op_kind       text NOT NULL,
    op_source     text NOT NULL,
    image_ref     text NOT NULL DEFAULT '',
    old_image_ref text NOT NULL DEFAULT '',
    reason        text NOT NULL DEFAULT '',
    generation    bigint NOT NULL,
    traceparent   text NOT NULL DEFAULT '',
    received_at   timestamptz NOT NULL DEFAULT now(),
    answered_at   timestamptz,
    outcome       text NOT NULL DEFAULT '',
    error_code    text NOT NULL DEFAULT '',
    error_message text NOT NULL DEFAULT '',
    PRIMARY KEY (channel, request_id)
);

CREATE INDEX requests_pending_idx ON requests (game_id, generation) WHERE answered_at IS NULL;

-- The transactional outbox: entries for the result, health and notification streams, written in
-- the transaction of the state change they report, relayed in id order by the publisher.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    stream       text NOT NULL CHECK (stream IN ('job_results', 'health_events', 'notification_intents')),
    fields       text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

CREATE INDEX outbox_pending_idx ON outbox (id) WHERE published_at IS NULL;
