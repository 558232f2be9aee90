#!/usr/bin/env bash
# Makes sure a Kafka broker for the outbox's Kafka tests is reachable on 127.0.0.1:9092 (or the
# first of KAFKA_BOOTSTRAP_SERVERS). When nothing answers there it starts nisshi, a broker
# speaking Kafka's protocol (a crates.io package, formerly tansu), with memory storage on
# 127.0.0.1:9092; when nisshi is missing it builds it once with cargo into
# $HOME/.cache/eventrail/nisshi (several minutes on two cores; later runs reuse it). The tests that
# kill and restart a broker start nisshi of their own from the same place (or $NISSHI). Fails
# when the broker cannot be had: the Kafka tests fail rather than skip.
set -euo pipefail

# shellcheck source=scripts/ports.sh
source "$(dirname "$0")/ports.sh"

NISSHI_VERSION=0.8.1
root="$HOME/.cache/eventrail/nisshi"
bootstrap="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
first="${bootstrap%%,*}"
host="${first%:*}"
port="${first##*:}"

if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
    reachable "$host" "$port" || {
        echo "kafka: nothing answers on $first (KAFKA_BOOTSTRAP_SERVERS)" >&2
        exit 1
    }
    echo "kafka: using KAFKA_BOOTSTRAP_SERVERS"
    exit 0
fi
if reachable "$host" "$port"; then
    echo "kafka: using $host:$port"
    exit 0
fi

nisshi="${NISSHI:-$root/bin/nisshi}"
if [[ ! -x "$nisshi" ]]; then
    echo "kafka: building nisshi $NISSHI_VERSION into $root (once; a few minutes)"
    build="$(mktemp -d)"
    started=$SECONDS
    # --ignore-rust-version: nisshi's lock file pins crates that declare rust-version 1.96, a
    # release newer than the toolchain here; they build with 1.95.
    CARGO_TARGET_DIR="$build" cargo install nisshi --version "$NISSHI_VERSION" --locked \
        --ignore-rust-version --no-default-features --features dynostore --root "$root" \
        --quiet || {
        rm -rf "$build"
        echo "kafka: 'cargo install nisshi' failed; the Kafka tests need it" >&2
        exit 1
    }
    rm -rf "$build"
    echo "kafka: nisshi built in $((SECONDS - started)) s"
    nisshi="$root/bin/nisshi"
fi

log="${TMPDIR:-/tmp}/eventrail-nisshi.log"
echo "kafka: starting nisshi on $host:$port with memory storage (log: $log)"
nohup "$nisshi" broker --listener-url "tcp://$host:$port" \
    --advertised-listener-url "tcp://$host:$port" \
    --storage-engine memory://nisshi/ >"$log" 2>&1 &
if wait_for "$host" "$port" 30; then
    echo "kafka: nisshi up on $host:$port"
    exit 0
fi
echo "kafka: nisshi did not answer on $host:$port within 30 s; see $log" >&2
exit 1
