-- Optional roles, the worker's part (see roles.sql): the reader sees the worker tables (status);
-- the worker keeps its registrations, leadership, assignments, checkpoints and gap skips.
-- A worker deposes a frozen leader with pg_terminate_backend: run every worker process as the
-- same login role (or grant it pg_signal_backend). A worker whose handlers append needs the
-- writer role too.
GRANT SELECT ON {worker_nodes}, {worker_leader}, {consumer_assignments}, {consumer_checkpoints},
    {consumer_gap_skips} TO {role_prefix}_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON {worker_nodes}, {worker_leader}, {consumer_assignments},
    {consumer_checkpoints}, {consumer_gap_skips} TO {role_prefix}_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON {worker_nodes}, {worker_leader}, {consumer_assignments},
    {consumer_checkpoints}, {consumer_gap_skips} TO {role_prefix}_admin;
