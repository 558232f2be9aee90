-- eventrail outbox: destinations backed off as a whole.
-- `{schema}` and `{outbox_destinations}` are replaced by validated, quoted names.

-- One row per destination a relay found unavailable (refused or lost connections, timeouts, a
-- broker down) or missing (a stream, queue or topic an operator may create). While
-- `next_attempt_at` is in the future no relay claims a message for it, and its messages keep
-- their attempts; the first publish after it probes the destination: a failure doubles the
-- backoff (jittered, on the database clock), any answer of the destination deletes the row.
CREATE TABLE {outbox_destinations} (
    destination      text        PRIMARY KEY,
    -- 'unavailable' or 'missing'.
    reason           text        NOT NULL CHECK (reason IN ('unavailable', 'missing')),
    -- When this outage was first seen.
    since            timestamptz NOT NULL DEFAULT now(),
    -- Failed probes so far, the first failure included: the backoff's exponent.
    failures         integer     NOT NULL DEFAULT 1 CHECK (failures >= 1),
    next_attempt_at  timestamptz NOT NULL,
    -- The whole error chain of the last failure.
    last_error       text        NOT NULL
);
