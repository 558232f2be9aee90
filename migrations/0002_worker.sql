-- eventrail worker runtime: membership, leadership lease, assignments, checkpoints, gap audit.
-- `{schema}` and the `{..}` table names are replaced by validated, quoted names.

CREATE TABLE {worker_nodes} (
    worker_id    uuid        PRIMARY KEY,
    name         text        NOT NULL,
    consumers    text[]      NOT NULL DEFAULT '{}',
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Leadership for deployments where session advisory locks do not work (PgBouncer in
-- transaction pooling): one row, held by a lease that the leader renews.
CREATE TABLE {worker_leader} (
    id         smallint    PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    worker_id  uuid,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO {worker_leader} (id) VALUES (1);

-- Which worker runs which consumer. `epoch` grows on every change: a checkpoint write checks it
-- in its own transaction, so a worker that lost a consumer cannot commit a batch of it.
CREATE TABLE {consumer_assignments} (
    consumer    text        PRIMARY KEY,
    worker_id   uuid,
    epoch       bigint      NOT NULL DEFAULT 0,
    assigned_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {consumer_checkpoints} (
    consumer      text        PRIMARY KEY,
    position      bigint      NOT NULL DEFAULT 0 CHECK (position >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    paused        boolean     NOT NULL DEFAULT false,
    failures      integer     NOT NULL DEFAULT 0,
    parked_at     timestamptz,
    last_error    text
);

-- Every hole a consumer skipped, with the evidence that it could never commit.
CREATE TABLE {consumer_gap_skips} (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer          text        NOT NULL,
    from_position     bigint      NOT NULL,
    to_position       bigint      NOT NULL,
    reason            text        NOT NULL CHECK (reason IN ('proven', 'timeout')),
    observed_snapshot text,
    horizon_xid       text,
    proven_snapshot   text,
    first_seen_at     timestamptz NOT NULL,
    skipped_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON {consumer_gap_skips} (consumer, from_position);
