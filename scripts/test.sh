#!/usr/bin/env bash
# Runs the whole test suite: doctests, then unit and integration tests against a real PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
# Message DB from its npm package, for the Message DB client tests (they fail without it).
bash scripts/ensure-message-db.sh
# PgBouncer, for the tests through a pooler in transaction mode (they fail without it).
bash scripts/ensure-pgbouncer.sh
# NATS JetStream and RabbitMQ, for the outbox's broker tests (they fail without them).
bash scripts/ensure-brokers.sh
# etcd and ZooKeeper, for the worker's leader election tests (they fail without them).
bash scripts/ensure-etcd.sh
bash scripts/ensure-zookeeper.sh
# protoc, for etcd-client's build (the `etcd` feature).
bash scripts/ensure-build-tools.sh
# MariaDB, for the outbox's MySQL tests (they fail without it).
bash scripts/ensure-mariadb.sh
# A Kafka broker (nisshi, built once into ~/.cache/eventrail/nisshi), for the Kafka sink's tests.
bash scripts/ensure-kafka.sh
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi
cargo test --doc --workspace --all-features --locked
cargo nextest run --workspace --all-features --locked --no-fail-fast
