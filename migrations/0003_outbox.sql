-- eventrail transactional outbox and consumer inbox.
-- `{schema}`, `{outbox}` and `{inbox}` are replaced by validated, quoted names.

-- One row per message, written in the producer's transaction and relayed to a broker.
-- `sequence` orders the messages of one partition key; `message_id` (uuid v7) is the broker's
-- dedup handle. A relay holds a partition key by the lease (`lease_owner`, `lease_expires_at`)
-- on the key's oldest unsent row, its head: only a key whose head is unleased can be claimed, so
-- that lease also holds the messages claimed behind the head. A row is `sent` once the broker
-- acknowledged it and `dead` after its last attempt (a dead row parks its partition key until an
-- operator requeues or purges it).
CREATE TABLE {outbox} (
    sequence         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id       uuid        NOT NULL UNIQUE,
    partition_key    text        NOT NULL,
    destination      text        NOT NULL,
    headers          jsonb       NOT NULL DEFAULT '{}',
    payload          bytea       NOT NULL,
    content_type     text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    state            text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'dead')),
    lease_owner      uuid,
    lease_expires_at timestamptz,
    sent_at          timestamptz
);
-- Partial indexes: the relay only ever looks at unsent rows (pending, and dead ones that park
-- their key); cleanup only at sent rows.
CREATE INDEX ON {outbox} (partition_key, sequence) WHERE state <> 'sent';
CREATE INDEX ON {outbox} (sequence) WHERE state = 'pending';
CREATE INDEX ON {outbox} (sent_at) WHERE state = 'sent';

-- Messages a consumer has processed, recorded in the consumer's own transaction.
CREATE TABLE {inbox} (
    consumer     text        NOT NULL,
    message_id   uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
