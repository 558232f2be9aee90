# The same command lines as .ci/run and the README.

# the whole test suite against a real PostgreSQL
test:
    bash scripts/test.sh

# formatting and clippy, warnings as errors
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

# eventrail append against raw tokio-postgres INSERT and COPY
bench:
    cargo run --release --locked -p eventrail-bench -- append

# the Message DB client against the same SQL issued directly
bench-message-db:
    cargo run --release --locked -p eventrail-bench -- message-db

# the quickstart example
demo:
    bash scripts/demo.sh

# the long torture run (default 10 minutes): faults of every kind, then every invariant checked
torture minutes="10":
    EVENTRAIL_TORTURE_MINUTES={{minutes}} cargo nextest run --release --locked -p integration-tests --all-features --run-ignored only -E 'test(torture_long)' --no-capture

# consumer lag under churn and recovery after each fault, with the default worker options
bench-faults:
    cargo run --release --locked -p eventrail-bench -- faults

# 3-step sagas per second with 1 and 4 runners, beside DBOS Transact (installed from PyPI when missing)
bench-saga:
    cargo run --release --locked -p eventrail-bench -- saga

# Message DB, Emmett and Python eventsourcing appending the append benchmark's payload (issue 13's peers)
bench-peers:
    cargo run --release --locked -p eventrail-bench -- peers

# every row of the performance table in one run (appends, catch-up, standby catch-up, relay, peers), each beside its raw twin
bench-table:
    bash scripts/ensure-brokers.sh
    cargo run --release --locked -p eventrail-bench -- table
