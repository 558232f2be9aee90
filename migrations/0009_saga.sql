-- eventrail sagas: instances, their steps, signals, registered definitions and live runners.
-- `{schema}`, `{saga_instances}`, `{saga_steps}`, `{saga_signals}`, `{saga_definitions}` and
-- `{saga_runners}` are replaced by validated, quoted names.
--
-- There is no coordinator: every runner claims due steps whose handler it registered
-- (`FOR UPDATE SKIP LOCKED`), holds a lease it renews while the step runs, and commits the
-- step's outcome only while its epoch is still the step's (a runner that lost the lease is
-- fenced). Whoever commits a step's outcome also advances the saga, under the saga row's lock.

CREATE TABLE {saga_instances} (
    id                uuid        PRIMARY KEY,
    definition        text        NOT NULL,
    version           integer     NOT NULL,
    -- The caller's idempotency key: starting twice with one key gives one saga.
    start_key         text,
    input             jsonb       NOT NULL,
    state             text        NOT NULL CHECK (state IN ('queued', 'running', 'compensating',
                          'completed', 'compensated', 'failed', 'cancelled', 'stuck')),
    cancel_requested  boolean     NOT NULL DEFAULT false,
    -- Why it compensates, failed or is stuck: the whole error chain.
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    CONSTRAINT saga_instances_start_key UNIQUE (definition, start_key)
);
CREATE INDEX saga_instances_in_flight ON {saga_instances} (definition, version)
    WHERE state IN ('queued', 'running', 'compensating', 'stuck');

CREATE TABLE {saga_steps} (
    saga_id               uuid        NOT NULL REFERENCES {saga_instances} (id),
    step                  text        NOT NULL,
    -- The handler that runs it ('definition@version/step' for code, the step type for data);
    -- NULL for the built-in timer and signal waits, which every runner serves.
    handler               text,
    kind                  text        NOT NULL CHECK (kind IN ('compensatable', 'pivot', 'retriable', 'timer', 'signal')),
    depends_on            text[]      NOT NULL DEFAULT '{}',
    has_compensation      boolean     NOT NULL DEFAULT false,
    -- A condition on JSON values (definitions given as data), evaluated when the step is due.
    condition             jsonb,
    -- Per step: timeout, retry policy, timer length or signal name and deadline.
    settings              jsonb       NOT NULL DEFAULT '{}',
    state                 text        NOT NULL CHECK (state IN ('blocked', 'ready', 'running', 'waiting',
                              'succeeded', 'skipped', 'failed', 'not_run', 'compensate_ready',
                              'compensating', 'compensated', 'compensation_stuck', 'aborted')),
    attempts              integer     NOT NULL DEFAULT 0,
    compensation_attempts integer     NOT NULL DEFAULT 0,
    output                jsonb,
    -- The whole error chain of the last failure.
    last_error            text,
    -- When it may be claimed next (ready, compensate_ready) or when its wait ends (waiting).
    due_at                timestamptz,
    -- The signal a waiting step waits for.
    waits_for             text,
    owner                 text,
    lease_until           timestamptz,
    -- Grows with every claim: a completion carrying an older epoch is refused.
    epoch                 bigint      NOT NULL DEFAULT 0,
    started_at            timestamptz,
    finished_at           timestamptz,
    compensated_at        timestamptz,
    PRIMARY KEY (saga_id, step)
);
CREATE INDEX saga_steps_due ON {saga_steps} (due_at)
    WHERE state IN ('ready', 'compensate_ready', 'waiting');
CREATE INDEX saga_steps_leased ON {saga_steps} (lease_until)
    WHERE state IN ('running', 'compensating');

-- Signals a saga received (an API call or an event): kept, so one that arrives before its step
-- waits is not lost.
CREATE TABLE {saga_signals} (
    saga_id      uuid        NOT NULL REFERENCES {saga_instances} (id),
    name         text        NOT NULL,
    payload      jsonb       NOT NULL DEFAULT 'null',
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_id, name)
);

-- Definitions known to the database: code definitions register their graph when a runner
-- starts, data definitions (JSON, YAML) when they are registered.
CREATE TABLE {saga_definitions} (
    name           text        NOT NULL,
    version        integer     NOT NULL,
    document       jsonb       NOT NULL,
    registered_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- Live runners and the handlers they serve: what no live runner can run is reported.
CREATE TABLE {saga_runners} (
    runner_id     text        PRIMARY KEY,
    handlers      text[]      NOT NULL,
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);

-- What each unfinished saga waits on: its steps that are not done, with their state, attempts,
-- due time, owner and last error.
CREATE VIEW {schema}.saga_waiting_on AS
SELECT i.id AS saga_id, i.definition, i.version, i.state AS saga_state, s.step, s.state AS step_state,
       s.handler, s.attempts, s.compensation_attempts, s.due_at, s.waits_for, s.owner, s.lease_until,
       s.last_error
FROM {saga_instances} i
JOIN {saga_steps} s ON s.saga_id = i.id
WHERE i.state IN ('queued', 'running', 'compensating', 'stuck')
  AND s.state IN ('blocked', 'ready', 'running', 'waiting', 'compensate_ready', 'compensating', 'compensation_stuck');

-- The last error of each saga that has one, and of which step.
CREATE VIEW {schema}.saga_last_errors AS
SELECT i.id AS saga_id, i.definition, i.state AS saga_state, i.last_error AS saga_error,
       (SELECT s.step FROM {saga_steps} s WHERE s.saga_id = i.id AND s.last_error IS NOT NULL
        ORDER BY coalesce(s.finished_at, s.started_at) DESC NULLS LAST LIMIT 1) AS step,
       (SELECT s.last_error FROM {saga_steps} s WHERE s.saga_id = i.id AND s.last_error IS NOT NULL
        ORDER BY coalesce(s.finished_at, s.started_at) DESC NULLS LAST LIMIT 1) AS step_error
FROM {saga_instances} i
WHERE i.last_error IS NOT NULL
   OR EXISTS (SELECT 1 FROM {saga_steps} s WHERE s.saga_id = i.id AND s.last_error IS NOT NULL);

-- Compensation progress of each saga that compensates or did: steps to undo, undone, stuck.
CREATE VIEW {schema}.saga_compensation_progress AS
SELECT i.id AS saga_id, i.definition, i.state AS saga_state,
       count(*) FILTER (WHERE s.has_compensation AND s.state IN ('succeeded', 'compensate_ready', 'compensating',
                                                                 'compensated', 'compensation_stuck')) AS to_compensate,
       count(*) FILTER (WHERE s.state = 'compensated') AS compensated,
       count(*) FILTER (WHERE s.state = 'compensation_stuck') AS stuck
FROM {saga_instances} i
JOIN {saga_steps} s ON s.saga_id = i.id
WHERE i.state IN ('compensating', 'compensated', 'cancelled', 'stuck')
GROUP BY i.id, i.definition, i.state;
