-- Optional roles, the outbox's part (see roles.sql). Payloads and headers can hold personal data:
-- the reader sees every outbox column but those. The writer enqueues (and records inbox entries);
-- the worker relays (claims, settles, cleans up) and keeps the destinations' backoff. The keys
-- table is written by both: enqueue marks a key as having unsent messages, a settle clears it.
REVOKE SELECT ON {outbox} FROM {role_prefix}_reader;
GRANT SELECT (sequence, message_id, partition_key, destination, content_type, created_at, attempts,
    next_attempt_at, last_error, state, lease_owner, lease_expires_at, sent_at)
    ON {outbox} TO {role_prefix}_reader;
GRANT SELECT ON {outbox_destinations}, {outbox_keys} TO {role_prefix}_reader;
GRANT INSERT ON {outbox} TO {role_prefix}_writer;
GRANT SELECT, INSERT, UPDATE ON {outbox_keys} TO {role_prefix}_writer;
GRANT SELECT, INSERT ON {inbox} TO {role_prefix}_writer;
GRANT SELECT, UPDATE, DELETE ON {outbox} TO {role_prefix}_worker;
GRANT SELECT, UPDATE, DELETE ON {outbox_keys} TO {role_prefix}_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON {outbox_destinations}, {inbox} TO {role_prefix}_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON {outbox}, {outbox_destinations}, {outbox_keys}, {inbox} TO {role_prefix}_admin;
